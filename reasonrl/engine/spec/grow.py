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
- captured (`EngineConfig.cuda_graphs`, CUDA only; `TreeGraphs`): the whole growth of a tree, every
  depth and the frontier selection between them, is one CUDA graph per batch bucket, committed-row
  bucket, top-k and depth, replayed with one launch. The sequences' committed draft rows are
  copied into the graph's static buffers (padded to the row bucket; padding rows repeat the last
  sequence and are dropped from the result). Graphs are captured lazily, the first time a key is
  met, into one memory pool within `EngineConfig.cuda_graph_memory` (a key that does not fit runs
  eager); a step that captured is kept out of the adaptive policy's measurements, as a compile is.
  A captured graph may hold the compiled step.

Greedy and `coupled`-sampled output cannot change: the draft only proposes, and verification
decides every token. Compiled, captured (padded) and eager drafts may round differently, so they
may propose other tokens now and then (the accepted length moves; with `draft_sampling="residual"`
the tokens drawn move too, their distribution does not).
"""

from __future__ import annotations

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


def graph_count() -> int:
    """Graphs torch.compile has made in this process so far."""
    return counters["stats"]["unique_graphs"]


class GrowStep:
    """Tree growth for the speculator: `grow_step` compiled or eager, the whole tree captured or
    not (module docstring)."""

    def __init__(self, draft: DraftHead, compile: bool, graphs: TreeGraphs | None = None):
        self.draft, self.graphs = draft, graphs
        if compile:  # every engine's draft shares grow_step's graphs (about four each): room for many
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        self.fn = torch.compile(grow_step, dynamic=True) if compile else grow_step
        self.compile_seconds = 0.0
        if graphs is not None:
            graphs.grow = lambda *args: grow_tree(draft, self, *args)

    @property
    def compiled(self) -> bool:
        return self.fn is not grow_step

    def builds(self) -> int:
        """Compiled graphs made in this process plus CUDA graphs captured here so far: a change
        across a step means the step paid for one."""
        return (graph_count() if self.compiled else 0) + (self.graphs.captures if self.graphs is not None else 0)

    def tree(self, states: list[DraftState], root_out: torch.Tensor, roots_pos: torch.Tensor, top_k: int, depth: int,
             no_rows: torch.Tensor) -> TreeSearch:
        """The grown search over these sequences' trees (`grow_tree`), captured when it can be.
        `no_rows`: an empty (0, H, D) key tensor, for a sequence without committed rows."""
        if self.graphs is not None and (search := self.graphs.run(states, root_out, roots_pos, top_k, depth)) is not None:
            return search
        return grow_tree(self.draft, self, top_k, depth, root_out, roots_pos, *padded_past(states, no_rows))

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
    def warm_up(self, top_k: int) -> None:
        """Compile the graphs a run needs now (module docstring), on dummy rows."""
        if not self.compiled:
            return
        start, c = time.perf_counter(), self.draft.config
        dev, dtype = self.draft.target.device, self.draft.target.dtype
        for b in (2, 1):
            for extra in (0, 2 * top_k):
                n, rows = b * top_k, lambda m: torch.zeros(b, m, c.num_kv_heads, c.head_dim, device=dev, dtype=dtype)
                mask = torch.ones(b, top_k, extra + top_k, dtype=torch.bool, device=dev)
                self(top_k, torch.zeros(n, dtype=torch.long, device=dev),
                     torch.zeros(n, c.hidden_size, device=dev, dtype=dtype), torch.full((n,), 5, device=dev), rows(5),
                     rows(5), torch.full((b,), 5, device=dev), mask, rows(extra) if extra else None,
                     rows(extra) if extra else None)
        self.compile_seconds = time.perf_counter() - start
        if self.compiled:
            log.info("compiled the draft's tree step in %.1fs", self.compile_seconds)


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

    def load(self, states: list[DraftState], root_out: torch.Tensor, roots_pos: torch.Tensor) -> None:
        """The sequences' inputs into rows 0..B-1; the padding rows after them repeat the last one's
        outputs, position and row count (their committed rows are stale but finite: masked or not,
        their results are dropped)."""
        batch = self.root_out.shape[0]
        for i, st in enumerate(states):
            if st.cache.len:
                k, v = st.cache.view()
                self.past_k[i, : st.cache.len].copy_(k)
                self.past_v[i, : st.cache.len].copy_(v)
        lens = [st.cache.len for st in states]
        self.past_lens.copy_(torch.tensor(lens + lens[-1:] * (batch - len(lens))), non_blocking=True)
        self.root_out.copy_(pad_rows(root_out, batch))
        self.roots_pos.copy_(pad_rows(roots_pos, batch))


class TreeGraphs:
    """Tree growth captured in CUDA graphs (module docstring): one graph per (batch bucket, row
    bucket, top-k, depth), captured the first time it is needed, within the pool's budget."""

    def __init__(self, config, batch_buckets: list[int], max_rows: int, vocab_size: int, pool: GraphPool):
        """`config`: the draft layer's model config (hidden size, key/value heads, head dim)."""
        self.config, self.batch_buckets, self.rows, self.vocab_size = config, batch_buckets, row_buckets(max_rows), vocab_size
        self.pool = pool
        self.grow: Callable[..., TreeSearch] | None = None  # grow_tree(top_k, depth, *group tensors); GrowStep sets it
        self.groups: dict[tuple[int, int], _Group] = {}
        self.graphs: dict[tuple[int, int, int, int], tuple] = {}  # (batch, rows, top_k, depth) -> (graph, outputs)
        self.skipped: set[tuple] = set()  # groups and graphs over the memory budget
        self.captures = self.replays = 0

    def run(self, states: list[DraftState], root_out: torch.Tensor, roots_pos: torch.Tensor, top_k: int,
            depth: int) -> TreeSearch | None:
        """`grow_tree` for these sequences through a graph; None when none fits (batch above the
        largest bucket, rows above the largest, or over the memory budget): grow eager."""
        batch = pick_bucket(len(states), self.batch_buckets)
        rows = pick_bucket(max(st.cache.len for st in states), self.rows)
        if batch is None or rows is None:
            return None
        group, key = self._group(batch, rows, root_out.dtype, root_out.device), (batch, rows, top_k, depth)
        if group is None or key in self.skipped:
            return None
        group.load(states, root_out, roots_pos)
        entry = self.graphs.get(key)
        if entry is None:
            captured = self.pool.capture(lambda *g: self.grow(top_k, depth, *g).tensors(), group.tensors)
            self.captures += 1
            if captured is None:
                self.skipped.add(key)
                return None
            entry = self.graphs[key] = captured
        graph, outputs = entry
        graph.replay()
        self.replays += 1
        return TreeSearch.of_tensors(min(top_k, self.vocab_size), outputs, len(states))

    def _group(self, batch: int, rows: int, dtype, device) -> _Group | None:
        key = (batch, rows)
        if key not in self.groups and key not in self.skipped:
            c = self.config
            group = _Group(batch, rows, c.hidden_size, c.num_kv_heads, c.head_dim, device, dtype)
            if self.pool.charge(group.nbytes):
                self.groups[key] = group
            else:
                self.skipped.add(key)
        return self.groups.get(key)

    def stats(self) -> dict:
        return {"spec_draft_graphs": len(self.graphs), "spec_draft_graph_replays": self.replays,
                "spec_draft_graph_pool_bytes": self.pool.bytes}
