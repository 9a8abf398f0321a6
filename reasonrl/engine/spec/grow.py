"""Draft-tree growth as functions of tensors alone: eager, compiled, or captured in CUDA graphs.

Growing a tree (EAGLE-2, tree.py) runs the draft once per depth over every sequence's frontier:
its decoder layer, the target's LM head, a log-softmax and a top-k (`grow_step`), then a few
small operations that pick the next frontier (`grow_tree`). On small models each of those is
dozens of operations whose launch or dispatch costs more than their arithmetic (measured:
docs/spec.md, "Compiled draft"). Two ways out, each optional:

- compiled (`EngineConfig.draft_compile`): each depth's `grow_step` runs through `torch.compile`
  (inductor, dynamic shapes: the committed rows and the frontier rows drafted so far grow from
  call to call). Compiling happens at engine start (`GrowStep.warm_up`: batch 2 and batch 1, each
  with and without earlier frontier rows, which are the graphs a run needs); when a shape still
  compiles later (a size of 1 elsewhere, which torch.compile specialises), the speculator sees
  the process's graph count move (`graph_count`) and keeps that step out of the adaptive policy's
  measurements. A compile that fails (no C++ compiler for inductor, say) logs a warning and the
  draft runs eager from then on.
- captured (`EngineConfig.cuda_graphs`, CUDA only; `DraftGraphs`): the whole growth of a tree,
  every depth and the frontier selection between them, is one CUDA graph per batch bucket,
  committed-row bucket, top-k and depth (the rung's: selection cuts each tree to its own room),
  replayed with one launch; so is the step's catch-up over the tokens the last verification
  accepted (`catch_up_step`, one graph per batch bucket, committed-row bucket and catch-up bucket
  of 1-16 new rows; longer catch-ups, such as a prompt's, and M-RoPE positions run eager). The
  sequences' committed draft rows are copied into the graphs' static buffers (padded to the row
  bucket; padding sequences take the last one's inputs, padding rows of a catch-up repeat the
  sequence's last row; both are dropped from the result). The graphs of the shortest contexts
  (the first row bucket: the full tree and its catch-ups, every batch bucket) are captured at
  engine start; the others the first time their key is met, mid-run. All go into a pool of their
  own within `EngineConfig.cuda_graph_memory` (a key that does not fit, or whose capture fails,
  runs eager); a step that captured is kept out of the adaptive policy's measurements, as a
  compile is. A captured tree may hold the compiled step.
- native (`EngineConfig.cpu_draft_kernel`, CPU, fp32; the default there): the whole growth of a
  tree is one call of a C++ kernel (kernels/csrc/decoder_cpu.cpp), and so is a catch-up over
  text positions, a prompt's included; the same arithmetic as the eager step, without a Python
  dispatch per operation. It takes precedence over compiling. Where the library cannot be
  built the draft runs as the other switches say.

Greedy and `coupled`-sampled output cannot change: the draft only proposes, and verification
decides every token. Compiled, captured (padded) and eager drafts may round differently, so they
may propose other tokens now and then (the accepted length moves; with `draft_sampling="residual"`
the tokens drawn move too, their distribution does not).
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Callable

import torch
from torch._dynamo.utils import counters
from torch.fx.experimental import _config as fx_config

from reasonrl.engine.compiled import pad_rows, pick_bucket
from reasonrl.engine.cuda_graphs import GraphPool
from reasonrl.engine.spec.draft import DraftHead
from reasonrl.engine.spec.draft_state import DraftState, PaddedDraftAttention, padded_past
from reasonrl.engine.spec.tree import TreeSearch
from reasonrl.kernels import cpu_ops

log = logging.getLogger(__name__)


def grow_step(draft: DraftHead, top_k: int, tokens: torch.Tensor, features: torch.Tensor, positions: torch.Tensor,
              past_k: torch.Tensor, past_v: torch.Tensor, past_lens: torch.Tensor, mask: torch.Tensor,
              extra_k: torch.Tensor | None, extra_v: torch.Tensor | None):
    """The frontier's (N,) tokens, (N, h) parent features and (N,) positions, the committed rows
    (B, P, H, D) with their counts (B,), the (B, k, X + k) mask over the X earlier frontier rows
    (`extra_k`/`extra_v`, (B, X, H, D), or None at the first depth) and the new ones -> the draft's
    outputs (N, h), the `top_k` most likely next tokens of each (N, top_k) and their log-probs in
    float32, and the new rows' keys and values (N, H, D)."""
    attn = PaddedDraftAttention(past_k, past_v, past_lens, mask, extra=None if extra_k is None else (extra_k, extra_v))
    out = draft(tokens, features, positions, attn)
    lp, tok = draft.logits(out).float().log_softmax(-1).topk(top_k, dim=-1)
    # contiguous: the next depth passes them back as `extra`, and a view's strides would compile anew
    return out, lp, tok, attn.new_k.contiguous(), attn.new_v.contiguous()


Step = Callable[..., tuple[torch.Tensor, ...]]  # grow_step without its draft argument


def grow_tree(draft: DraftHead, step: Step, top_k: int, depth: int, root_out: torch.Tensor, roots_pos: torch.Tensor,
              past_k: torch.Tensor, past_v: torch.Tensor, past_lens: torch.Tensor) -> TreeSearch:
    """EAGLE-2 expansion of B trees to `depth` draft tokens: the roots' draft outputs (B, h) and
    positions (B,), the committed rows as in `grow_step`; one `step` per depth over every frontier."""
    search = TreeSearch(draft.logits(root_out).float().log_softmax(-1), top_k)
    b, k, dev = root_out.shape[0], search.k, root_out.device
    parent_out = root_out[:, None, :].expand(b, k, -1)  # draft output feeding each frontier node
    temp_k = temp_v = None  # (B, R, H, D): keys/values of the frontier rows drafted so far
    ancestors = torch.zeros(b, k, 0, dtype=torch.bool, device=dev)
    own_row = torch.eye(k, dtype=torch.bool, device=dev).expand(b, k, k)
    for d in range(1, depth):
        tokens = search.frontier_tokens()  # (B, k)
        # each frontier node sees the committed rows, its ancestors among the drafted ones, itself
        positions = (roots_pos[:, None] + d).expand(b, k).reshape(-1)
        out, lp, tok, new_k, new_v = step(k, tokens.reshape(-1), parent_out.reshape(b * k, -1), positions, past_k,
                                          past_v, past_lens, torch.cat([ancestors, own_row], 2), temp_k, temp_v)
        out = out.view(b, k, -1)
        new_k, new_v = new_k.view(b, k, *new_k.shape[1:]), new_v.view(b, k, *new_v.shape[1:])
        temp_k = new_k if temp_k is None else torch.cat([temp_k, new_k], 1)
        temp_v = new_v if temp_v is None else torch.cat([temp_v, new_v], 1)
        slot = search.expand(lp.view(b, k, k), tok.view(b, k, k))  # (B, k) parent slot of the new frontier
        own = torch.eye(k, dtype=torch.bool, device=dev)[slot]  # (B, k, k): the parent's own row
        ancestors = torch.cat([ancestors.gather(1, slot[:, :, None].expand(-1, -1, ancestors.shape[2])), own], 2)
        parent_out = out.gather(1, slot[:, :, None].expand(-1, -1, out.shape[2]))
    return search


def catch_up_step(draft: DraftHead, rows: int, x: torch.Tensor, positions: torch.Tensor, past_k: torch.Tensor,
                  past_v: torch.Tensor, past_lens: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A catch-up of B sequences by `rows` new rows each (x (B * rows, h) fused rows, (B * rows,)
    positions; causal among the new rows, after the committed ones) -> the draft's outputs and the
    new rows' keys and values, flat as x. A sequence with fewer rows pads them after its last:
    its real rows never see the padding."""
    attn = PaddedDraftAttention(past_k, past_v, past_lens, rows=rows)
    out = draft.decode(x, positions, attn)
    return out, attn.new_k, attn.new_v


def graph_count() -> int:
    """Graphs torch.compile has made in this process so far."""
    return counters["stats"]["unique_graphs"]


class GrowStep:
    """Tree growth for the speculator: `grow_step` compiled or eager, the whole tree captured or
    not (module docstring)."""

    def __init__(self, draft: DraftHead, compile: bool, graphs: DraftGraphs | None = None, native: bool = False):
        self.draft, self.graphs = draft, graphs
        # read in place at every call: weights updated in place (a colocated trainer's step) are seen
        self.weights = cpu_ops.draft_weights(draft) if native else None
        compile = compile and not self.native
        if compile:  # every engine's draft shares grow_step's graphs (about four each): room for many
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        self.fn = torch.compile(grow_step, dynamic=True) if compile else grow_step
        self.compile_seconds = 0.0

    @property
    def compiled(self) -> bool:
        return self.fn is not grow_step

    @property
    def native(self) -> bool:
        return self.weights is not None

    def builds(self) -> int:
        """Compiled graphs made in this process plus CUDA graphs captured here so far: a change
        across a step means the step paid for one."""
        return (graph_count() if self.compiled else 0) + (self.graphs.captures if self.graphs is not None else 0)

    def tree(self, states: list[DraftState], root_out: torch.Tensor, roots_pos: torch.Tensor, top_k: int, depth: int,
             no_rows: torch.Tensor, graph_depth: int | None = None) -> TreeSearch:
        """The grown search over these sequences' trees (`grow_tree` to `depth`), captured when it
        can be: then grown to `graph_depth` (>= depth, the tree shape's: one graph for every
        sequence's room; the caller's selection keeps each tree within its own depth).
        `no_rows`: an empty (0, H, D) key tensor, for a sequence without committed rows."""
        if self.graphs is not None:
            search = self.graphs.run(states, root_out, roots_pos, top_k, max(depth, graph_depth or depth), self._grow)
            if search is not None:
                return search
        if self.native:
            past_k, past_v = _committed(states, no_rows)
            tensors = cpu_ops.draft_tree_cpu(self.weights, self.draft.config, root_out, roots_pos,
                                             past_k, past_v, top_k, depth)
            return TreeSearch.of_tensors(min(top_k, self.draft.config.vocab_size), tensors, root_out.shape[0])
        return self._grow(top_k, depth, root_out, roots_pos, *padded_past(states, no_rows))

    def catch_up_text(self, states: list[DraftState], sources: list) -> tuple[torch.Tensor, ...] | None:
        """`catch_up` of text rows (visual.RowSource) with their rows fused in the C++ kernel as
        well, from token ids and features (a batch-1 round's fusing in PyTorch cost as much as the
        draft layer); None where that kernel does not apply (no kernel, rows of an image prompt's
        prompt). Past an image prompt's prompt every token is text, at one position on all three
        M-RoPE axes, shifted by the prompt's `rope_delta`: plain rotary at that position."""
        if not self.native or any(src.mm is not None and src.start + 1 < len(src.mm.input_ids) for src in sources):
            return None
        c = self.draft.config
        no_rows = sources[0].features.new_empty(0, c.num_kv_heads, c.head_dim)
        first = [src.start + 1 + (src.mm.rope_delta if src.mm is not None else 0) for src in sources]
        return cpu_ops.draft_catch_up_cpu(self.weights, c, [t for src in sources for t in src.ids],
                                          [src.features for src in sources], first, *_committed(states, no_rows))

    def catch_up(self, states: list[DraftState], x: torch.Tensor, positions: torch.Tensor,
                 lengths: list[int]) -> tuple[torch.Tensor, ...] | None:
        """A catch-up of these sequences by `lengths` (>= 1) rows each (x (sum, h), positions (sum,))
        through the C++ kernel or a CUDA graph: each sequence's newest row's output (B, h) and every
        new row's key and value (`DraftHead.decode_newest`); None when it runs neither (no kernel
        and no graphs, M-RoPE positions, a long catch-up for the graphs, over budget): decode eager."""
        if positions.dim() != 1:
            return None
        if self.native:
            no_rows = x.new_empty(0, self.draft.config.num_kv_heads, self.draft.config.head_dim)
            return cpu_ops.draft_rows_cpu(self.weights, self.draft.config, x, positions, *_committed(states, no_rows),
                                          lengths)
        if self.graphs is None:
            return None
        return self.graphs.catch_up(states, x, positions, lengths, self._decode)

    # what the graphs capture, passed at each call (a graph keeps no reference to this step)
    def _grow(self, *args) -> TreeSearch:
        return grow_tree(self.draft, self, *args)

    def _decode(self, *args) -> tuple[torch.Tensor, ...]:
        return catch_up_step(self.draft, *args)

    def __call__(self, *args) -> tuple[torch.Tensor, ...]:
        """`grow_step` of the draft on these arguments."""
        if not self.compiled:
            return grow_step(self.draft, *args)
        # contiguous inputs: an expanded row (batch 1's features and positions) has other strides,
        # and strides are part of what a compiled graph assumes
        args = tuple(a.contiguous() if isinstance(a, torch.Tensor) else a for a in args)
        try:
            # no "duck" sizes: two sizes equal while compiling (the frontier and the rows drafted
            # before it, at the second depth) would be assumed equal ever after, and compile anew
            with fx_config.patch(use_duck_shape=False):
                return self.fn(self.draft, *args)
        except Exception as e:  # noqa: BLE001 - a real error raises again from the eager step below
            log.warning("compiling the draft failed (%s: %s); the draft runs eager", type(e).__name__, e)
            self.fn = grow_step
            return grow_step(self.draft, *args)

    @torch.no_grad()
    def warm_up(self, top_k: int, depth: int) -> None:
        """Compile the graphs a run needs now (module docstring), on dummy rows; then capture the
        CUDA graphs of the shortest contexts for the full tree (`DraftGraphs.warm_up`)."""
        if self.compiled:
            start, c = time.perf_counter(), self.draft.config
            dev, dtype = self.draft.target.device, self.draft.target.dtype
            for b in (2, 1):
                for extra in (0, 2 * top_k):
                    n, rows = b * top_k, lambda m: torch.zeros(b, m, c.num_kv_heads, c.head_dim, device=dev, dtype=dtype)
                    mask = torch.ones(b, top_k, extra + top_k, dtype=torch.bool, device=dev)
                    self(top_k, torch.zeros(n, dtype=torch.long, device=dev),
                         torch.zeros(n, c.hidden_size, device=dev, dtype=dtype), torch.full((n,), 5, device=dev),
                         rows(5), rows(5), torch.full((b,), 5, device=dev), mask, rows(extra) if extra else None,
                         rows(extra) if extra else None)
            self.compile_seconds = time.perf_counter() - start
            log.info("compiled the draft's tree step in %.1fs", self.compile_seconds)
        if self.graphs is not None:
            self.graphs.warm_up(self._grow, self._decode, top_k, depth, self.draft.target.dtype,
                                self.draft.target.device)


def _committed(states: list[DraftState], no_rows: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each sequence's committed draft keys and values, (rows, H, D) views, unpadded."""
    views = [st.cache.view() if st.cache.len else (no_rows, no_rows) for st in states]
    return [k for k, _ in views], [v for _, v in views]


def row_buckets(max_rows: int, smallest: int = 64) -> list[int]:
    """Committed-row counts the captured trees are padded to: powers of two from `smallest` until
    one holds `max_rows`."""
    sizes = [smallest]
    while sizes[-1] < max_rows:
        sizes.append(2 * sizes[-1])
    return sizes


class _Group:
    """Static inputs shared by the trees of one (batch bucket, row bucket): the roots' draft
    outputs and positions, the committed rows and their counts."""

    def __init__(self, batch: int, rows: int, hidden: int, kv_heads: int, head_dim: int, device, dtype):
        self.root_out = torch.zeros(batch, hidden, device=device, dtype=dtype)
        self.roots_pos = torch.zeros(batch, dtype=torch.long, device=device)
        self.past_k = torch.zeros(batch, rows, kv_heads, head_dim, device=device, dtype=dtype)
        self.past_v = torch.zeros_like(self.past_k)
        self.past_lens = torch.zeros(batch, dtype=torch.long, device=device)

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.root_out, self.roots_pos, self.past_k, self.past_v, self.past_lens

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)

    def load_past(self, states: list[DraftState]) -> None:
        """The sequences' committed rows and their counts into rows 0..B-1; a padding row after
        them takes the last one's count (its committed rows are stale but finite: masked or not,
        its results are dropped)."""
        for i, st in enumerate(states):
            if st.cache.len:
                k, v = st.cache.view()
                self.past_k[i, : st.cache.len].copy_(k)
                self.past_v[i, : st.cache.len].copy_(v)
        lens = [st.cache.len for st in states]
        self.past_lens.copy_(torch.tensor(lens + lens[-1:] * (self.past_lens.shape[0] - len(lens))), non_blocking=True)

    def load_roots(self, root_out: torch.Tensor, roots_pos: torch.Tensor) -> None:
        """The roots' draft outputs and positions; padding rows repeat the last."""
        self.root_out.copy_(pad_rows(root_out, self.root_out.shape[0]))
        self.roots_pos.copy_(pad_rows(roots_pos, self.roots_pos.shape[0]))


CATCH_UP_BUCKETS = [1, 2, 4, 8, 16]
"""New rows per sequence a captured catch-up is padded to (a step's catch-up is what the last
verification accepted: a few rows; longer ones, such as a prompt's, run eager)."""


class DraftGraphs:
    """The draft's steps captured in CUDA graphs (module docstring): tree growth, one graph per
    (batch bucket, row bucket, top-k, depth), and the catch-up, one per (batch bucket, row bucket,
    catch-up bucket); each captured the first time it is needed, within the pool's budget."""

    def __init__(self, config, batch_buckets: list[int], max_rows: int, vocab_size: int, pool: GraphPool):
        """`config`: the draft layer's model config (hidden size, key/value heads, head dim)."""
        self.config, self.batch_buckets, self.rows, self.vocab_size = config, batch_buckets, row_buckets(max_rows), vocab_size
        self.pool = pool
        self.inputs: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # catch-up key -> static x, positions
        self.groups: dict[tuple[int, int], _Group] = {}
        self.graphs: dict[tuple, tuple] = {}  # ("tree", batch, rows, top_k, depth) or ("catch_up", batch, rows, new) -> (graph, outputs)
        self.skipped: set[tuple] = set()  # groups and graphs over the memory budget
        self.captures = self.replays = 0
        self.capture_seconds = 0.0  # at start-up (warm_up)

    def warm_up(self, grow: Callable[..., TreeSearch], decode: Callable[..., tuple[torch.Tensor, ...]], top_k: int,
                depth: int, dtype, device) -> None:
        """Capture now, for every batch bucket, the graphs of the shortest contexts (the first row
        bucket): the full tree (`top_k`, `depth`) and the catch-ups of up to depth + 1 rows (what
        a verification can accept). Other keys (longer contexts, smaller rungs) are captured when
        first met; what did not fit the budget runs eager."""
        start, h = time.perf_counter(), self.config.hidden_size
        longest = pick_bucket(min(depth + 1, CATCH_UP_BUCKETS[-1]), CATCH_UP_BUCKETS)
        rows = lambda n: torch.zeros(n, h, dtype=dtype, device=device)  # noqa: E731
        ids = lambda n: torch.zeros(n, dtype=torch.long, device=device)  # noqa: E731
        for batch in self.batch_buckets:
            states = [DraftState.at(0) for _ in range(batch)]
            self.run(states, rows(batch), ids(batch), top_k, depth, grow)
            for new in (n for n in CATCH_UP_BUCKETS if n <= longest):
                self.catch_up(states, rows(batch * new), ids(batch * new), [new] * batch, decode)
        self.capture_seconds = time.perf_counter() - start
        log.info("captured %d draft graphs at start-up in %.1fs", len(self.graphs), self.capture_seconds)

    def run(self, states: list[DraftState], root_out: torch.Tensor, roots_pos: torch.Tensor, top_k: int,
            depth: int, grow: Callable[..., TreeSearch]) -> TreeSearch | None:
        """`grow(top_k, depth, root_out, roots_pos, past_k, past_v, past_lens)` (`grow_tree`) for
        these sequences through a graph; None when none fits (batch above the largest bucket, rows
        above the largest, over the memory budget, a failed capture): grow eager."""
        batch, rows, group = self._group(states, root_out.dtype, root_out.device)
        key = ("tree", batch, rows, top_k, depth)
        if group is None or key in self.skipped:
            return None
        group.load_past(states)
        group.load_roots(root_out, roots_pos)
        outputs = self._replay(key, lambda *g: grow(top_k, depth, *g).tensors(), group.tensors)
        return None if outputs is None else TreeSearch.of_tensors(min(top_k, self.vocab_size), outputs, len(states))

    def catch_up(self, states: list[DraftState], x: torch.Tensor, positions: torch.Tensor, lengths: list[int],
                 decode: Callable[..., tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...] | None:
        """`decode(rows, x, positions, past_k, past_v, past_lens)` (`catch_up_step`) for these
        sequences through a graph: each sequence's newest row's output and every real row's key and
        value (the padding dropped); None when none fits: decode eager."""
        new = pick_bucket(max(lengths), CATCH_UP_BUCKETS)
        if new is None or min(lengths) < 1:
            return None
        batch, rows, group = self._group(states, x.dtype, x.device)
        key = ("catch_up", batch, rows, new)
        if group is None or key in self.skipped:
            return None
        static = self.inputs.get(key)
        if static is None:
            if not self.pool.charge(batch * new * (x.shape[1] * x.element_size() + positions.element_size())):
                self.skipped.add(key)
                return None
            static = self.inputs[key] = (torch.zeros(batch * new, x.shape[1], device=x.device, dtype=x.dtype),
                                         torch.zeros(batch * new, dtype=positions.dtype, device=x.device))
        # padded row j of sequence i is its row min(j, n_i - 1); padding sequences repeat the last
        starts = [0, *itertools.accumulate(lengths)]
        spread = [starts[i] + min(j, lengths[i] - 1) for i in range(len(lengths)) for j in range(new)]
        spread += spread[-new:] * (batch - len(lengths))
        index = torch.tensor(spread, device=x.device)
        static[0].copy_(x[index])
        static[1].copy_(positions[index])
        group.load_past(states)
        outputs = self._replay(key, lambda *a: decode(new, *a), (*static, group.past_k, group.past_v, group.past_lens))
        if outputs is None:
            return None
        real = torch.tensor([i * new + j for i, n in enumerate(lengths) for j in range(n)], device=x.device)
        newest = torch.tensor([i * new + n - 1 for i, n in enumerate(lengths)], device=x.device)
        return outputs[0][newest], outputs[1][real], outputs[2][real]

    def _replay(self, key: tuple, fn: Callable, static: tuple) -> tuple[torch.Tensor, ...] | None:
        """Replay the graph of `key` (captured now from `fn(*static)` if it is new); its outputs,
        or None when its capture does not fit the budget or fails (and it is not tried again)."""
        entry = self.graphs.get(key)
        if entry is None:
            captured = self.pool.capture(fn, static)
            self.captures += 1
            if captured is None:
                self.skipped.add(key)
                return None
            entry = self.graphs[key] = captured
        graph, outputs = entry
        graph.replay()
        self.replays += 1
        return outputs

    def _group(self, states: list[DraftState], dtype, device) -> tuple[int | None, int | None, _Group | None]:
        """(batch bucket, row bucket, their group) for these sequences; the group is None when a
        bucket is exceeded or its buffers do not fit the budget (charged before they are allocated)."""
        batch = pick_bucket(len(states), self.batch_buckets)
        rows = pick_bucket(max(st.cache.len for st in states), self.rows)
        key = (batch, rows)
        if batch is None or rows is None or key in self.skipped:
            return batch, rows, None
        if key not in self.groups:
            c = self.config
            shape = (batch, rows, c.hidden_size, c.num_kv_heads, c.head_dim)
            if self.pool.charge(_Group(*shape, "meta", dtype).nbytes):  # sized on the meta device: nothing allocated
                self.groups[key] = _Group(*shape, device, dtype)
            else:
                self.skipped.add(key)
                return batch, rows, None
        return batch, rows, self.groups[key]

    def stats(self) -> dict:
        return {"spec_draft_graphs": len(self.graphs), "spec_draft_graph_replays": self.replays,
                "spec_draft_catch_up_graphs": sum(key[0] == "catch_up" for key in self.graphs),
                "spec_draft_capture_seconds": self.capture_seconds,
                "spec_draft_graph_pool_bytes": self.pool.bytes}
