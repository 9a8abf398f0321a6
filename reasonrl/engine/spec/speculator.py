"""`Speculator`: speculative decoding inside the engine's continuous batching.

Each step, every decoding sequence that asks for it (and has room) gets a draft tree (tree.py)
grown by the draft head (draft.py); its rows join the step's flat batch with a tree mask, so one
target forward verifies all trees and runs everyone else's prefill chunks and plain decode
tokens. Sequences without a tree (no draft requested, prefill, no room) decode as usual.

Cache bookkeeping for a sequence with n tokens whose last token (the root) is pending: the tree's
rows are written at positions n-1 .. n-1+m of its block table (blocks reserved for them without
prefix-cache registration). After verification the accepted rows' keys and values are copied to
positions n, n+1, ... (the root stays at n-1), the blocks past them are freed and the now-final
full blocks registered. The draft keeps its own one-layer cache per sequence: row j holds
(x_{j+1}, f_j), f being the target's final hidden states, which every target forward returns
for free and which are collected here.

How large a tree each step gets, down to none, is the adaptive policy's call (adaptive.py), from
the number of sequences that could get one and measured acceptance and step times. Where the
policy runs trees or will try one soon, a sequence decoding without a tree keeps handing the draft
its features and the draft catches up over them at its next tree (or restarts its context when it
fell more than `MAX_LAG` tokens behind); where it runs none, no features are kept at all, and the
draft's context restarts where they resume.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from reasonrl.engine.block_manager import BlockManager
from reasonrl.engine.sequence import Sequence
from reasonrl.engine.spec.adaptive import AdaptiveConfig, AdaptivePolicy, StepLog, TreeShape, ladder
from reasonrl.engine.spec.draft import DraftHead
from reasonrl.engine.spec.draft_state import DraftState, NewestRowAttention
from reasonrl.engine.spec.grow import GrowStep, DraftGraphs
from reasonrl.engine.spec.tree import DraftTree
from reasonrl.engine.spec.visual import RowSource, VisualReport, catch_up_rows
from reasonrl.engine.spec.verify import Verdict


@dataclass
class SpecConfig:
    top_k: int = 8
    """Children drafted per expanded node, and nodes expanded per depth (EAGLE-2's k)."""
    depth: int = 6
    """Deepest draft token."""
    num_nodes: int = 32
    """Draft tokens verified per sequence and step (EAGLE-2's total tokens, less the root).
    Validated where they are set: `EngineConfig.draft_*`."""
    adaptive: AdaptiveConfig = field(default_factory=AdaptiveConfig)
    """How each step's tree size is chosen (adaptive.py); the three above are the largest tree."""
    compile: bool = False
    """Run each depth of tree growth through torch.compile (grow.py); compiled at start-up."""
    native: bool = False
    """CPU, fp32: grow trees and run short catch-ups in one C++ call each (grow.py)."""


MAX_LAG = 512
"""Features a sequence may hold for its draft while decoding without trees; past this the draft's
context restarts at the newest token (bounds memory and copying during long stretches without
speculation, at the cost of a shorter draft context afterwards)."""


class Speculator:
    def __init__(self, draft: DraftHead, kv, blocks: BlockManager, config: SpecConfig, max_model_len: int, images=None,
                 graphs: DraftGraphs | None = None):
        """`images`: the engine's `Images`, where the draft reads the merged image tokens of prompts
        with images; `graphs`: capture tree growth in CUDA graphs (grow.py)."""
        self.draft, self.kv, self.blocks, self.config, self.images = draft, kv, blocks, config, images
        self.visual_reports: dict[str, VisualReport] = {}  # by request id: the draft's visual tokens and FLOPs
        self.max_model_len = max_model_len
        self.states: dict[int, DraftState] = {}
        # The target's features of full blocks, by the prefix cache's chain hash: a sequence whose
        # first tokens came from the prefix cache takes their features from here (LRU, bounded).
        self.block_features: OrderedDict[int, torch.Tensor] = OrderedDict()
        self.max_block_features = 4096
        self.rounds = self.emitted = self.kept = self.drafted = 0
        self.shapes = ladder(config.top_k, config.depth, config.num_nodes)
        self.policy = AdaptivePolicy(self.shapes, config.adaptive)
        self.grow_step = GrowStep(draft, config.compile, graphs, config.native)
        self.grow_step.warm_up(config.top_k, config.depth)
        self.step_log: StepLog | None = None
        self.steps_without_trees = 0
        self.collecting = True  # this step's target features go to the draft (adaptive.py: wants_features)

    def wants(self, seq: Sequence) -> bool:
        # adjusted logits would differ at each position of a draft tree: penalties count the tokens
        # before it (engine/penalties.py), a grammar's mask depends on the path to it (engine/grammar.py)
        return seq.params.speculative and not seq.params.adjusts_logits

    # ---- features -------------------------------------------------------------------------------
    def observe_row(self, seq: Sequence, position: int, hidden: torch.Tensor, row: int) -> None:
        """A decode step's one feature (position `position` of `seq`, row `row` of `hidden`): the
        common case, kept by reference (see `observe` for the general one)."""
        st = self.states.get(seq.seq_id)
        if st is None or st.feature_start + st.num_features != position or \
                position - max(st.rows_end, len(seq.prompt_ids)) >= MAX_LAG:
            self.observe(seq, position, hidden[row: row + 1])
            return
        st.add_row(hidden, row)
        if st.stored >= 0 and position + 1 - st.stored >= self.blocks.block_size:
            self._keep_blocks(seq, st)

    def observe(self, seq: Sequence, start: int, features: torch.Tensor) -> None:
        """The target's features for positions start .. start + len - 1 of `seq`."""
        st = self.states.get(seq.seq_id)
        if st is None:
            st = self.states[seq.seq_id] = self._start(seq, start)
        expected = st.feature_start + st.num_features
        lagging = expected - max(st.rows_end, len(seq.prompt_ids)) > MAX_LAG  # output tokens the draft has not seen
        if start > expected or lagging:  # a gap cannot be bridged: restart the draft's context here
            self.states[seq.seq_id] = st = DraftState.at(start)
            expected = start
        if start + features.shape[0] > expected:
            st.add_features(features[expected - start:])
        self._keep_blocks(seq, st)

    def _start(self, seq: Sequence, start: int) -> DraftState:
        """A new draft context: from position 0 when the features of the blocks the prefix cache
        served are known, else from `start`."""
        bs, known = self.blocks.block_size, []
        for i in range(start // bs if start % bs == 0 else 0):
            f = self._cached_block(self._block_key(seq, i))
            if f is None:
                return DraftState.at(start)
            known.append(f)
        if not known:
            return DraftState.at(start) if start else DraftState(first=0, stored=0)
        return DraftState(first=0, stacked=torch.cat(known), stored=start)

    def _keep_blocks(self, seq: Sequence, st: DraftState) -> None:
        """Record the features of the sequence's blocks that are full and registered by the prefix
        cache (a draft tree's accepted rows are once the step settles: the next call takes them)."""
        bs, end = self.blocks.block_size, st.feature_start + st.num_features
        if st.stored < 0 or end - st.stored < bs:
            return
        while end - st.stored >= bs:
            key = self._block_key(seq, st.stored // bs)
            if key is None:
                return
            lo = st.stored - st.feature_start
            self._store_block(key, st.features[lo: lo + bs])
            st.stored += bs

    def keep_prompt_blocks(self, seq: Sequence, start: int, features: torch.Tensor) -> None:
        """In a step that hands the draft no features: the features of the full blocks among a
        prompt chunk's rows (positions start .. start + len - 1), for later requests that share them
        through the prefix cache, and no draft state. Without them every request after a stretch
        without trees would start its draft past the shared prefix (cold, accepting less) for as long
        as the prefix stayed cached; a prompt's rows come once per request, so this costs little.
        Only behind known blocks: a block this chunk starts inside of (a chunked prompt) is not
        known, and a draft cannot start past it, so nothing after it is kept."""
        bs = self.blocks.block_size
        for i in range((start + features.shape[0]) // bs):
            key = self._block_key(seq, i)
            if key is None:
                return
            if i * bs >= start:
                if self._cached_block(key) is None:
                    self._store_block(key, features[i * bs - start: (i + 1) * bs - start].clone())
            elif self._cached_block(key) is None:
                return

    def _block_key(self, seq: Sequence, i: int) -> int | None:
        """The prefix cache's key of the sequence's block i (`BlockManager`: its content, image
        digests included, chained to the blocks before it); None while the block is not registered
        (not full, a draft tree's provisional rows, prefix caching off)."""
        return self.blocks.blocks[seq.block_table[i]].hash if i < len(seq.block_table) else None

    def _cached_block(self, key: int | None) -> torch.Tensor | None:
        f = self.block_features.get(key) if key is not None else None
        if f is not None:
            self.block_features.move_to_end(key)  # in use: the last to be dropped
        return f

    def _store_block(self, key: int, features: torch.Tensor) -> None:
        self.block_features[key] = features
        self.block_features.move_to_end(key)
        while len(self.block_features) > self.max_block_features:
            self.block_features.popitem(last=False)

    def forget(self, seq: Sequence) -> None:
        self.states.pop(seq.seq_id, None)

    def reset(self) -> None:
        """The weights changed: the features kept for cached blocks belong to the old ones."""
        self.block_features.clear()

    # ---- proposing --------------------------------------------------------------------------------
    def propose(self, scheduled: list[tuple[Sequence, int]], budget: int) -> dict[int, DraftTree]:
        """Draft trees for the decoding sequences of this step, within `budget` extra tokens. The
        policy decides first, from the number of decoding sequences, so a step it runs without
        trees costs nothing more here (not even a no-grad context: a microsecond of a 0.19 ms step)."""
        decoding = sum(1 for _, n in scheduled if n == 1)
        rung = self.policy.choose(decoding) if decoding else len(self.shapes) - 1
        shape = self.shapes[rung]
        if shape is None and decoding and self.policy.resting(decoding):  # nothing to draft, learn or hand over
            self.step_log, self.collecting = None, False
            self.steps_without_trees += 1
            return {}
        self.step_log = StepLog(decoding, rung)
        self.collecting = shape is not None or self.policy.wants_features(decoding)
        if shape is None:
            self.steps_without_trees += decoding > 0
            return {}
        return self._draft(scheduled, budget, shape)

    @torch.no_grad()
    def _draft(self, scheduled: list[tuple[Sequence, int]], budget: int, shape: TreeShape) -> dict[int, DraftTree]:
        cands, depths = [], []
        for seq, n in scheduled:
            if n != 1 or seq.num_pending != 1 or not self.wants(seq):
                continue
            room = min(seq.params.max_tokens - len(seq.output_ids), self.max_model_len - seq.num_tokens) - 1
            st = self.states.get(seq.seq_id)
            if room < 1 or st is None or st.feature_start + st.num_features < seq.num_tokens - 1:
                continue
            cands.append(seq)
            depths.append(room)
        if not cands:
            return {}
        builds = self.grow_step.builds()
        roots = self._catch_up(cands)
        trees = self._grow(cands, roots, [min(d, shape.depth) for d in depths], shape)
        # a step in which something compiled or was captured says nothing of its cost
        self.step_log.built = self.grow_step.builds() != builds
        out = {}
        for seq, tree in zip(cands, trees):
            extra = tree.size - 1
            if extra > budget or not self.blocks.reserve(seq, tree.size):
                continue
            budget -= extra
            out[seq.seq_id] = tree
            self.drafted += extra
            self.step_log.tree_rows += extra
        return out

    def _catch_up(self, seqs: list[Sequence]) -> torch.Tensor:
        """Commit draft rows up to each sequence's root; returns the root rows' outputs (B, h)."""
        items, behind = [], []
        for seq in seqs:
            st = self.states[seq.seq_id]
            start, end = st.rows_end, seq.num_tokens - 1  # new rows for tokens at positions start+1 .. end
            if end > start:
                items.append(self._source(seq, start, end, st.features[start - st.feature_start: end - st.feature_start]))
                behind.append(seq)
        if items:
            states = [self.states[seq.seq_id] for seq in behind]
            newest, new_k, new_v, lengths, removed_rows = self._draft_rows(states, items)
            bounds = list(itertools.accumulate(lengths, initial=0))
            for b, (st, lo, hi, removed) in enumerate(zip(states, bounds, bounds[1:], removed_rows)):
                st.cache.append(new_k[lo:hi], new_v[lo:hi])
                st.removed += removed
                st.last_out = newest[b]
                # keep the features the draft has not used, and those of a block not yet recorded
                st.drop_features_before(min(st.rows_end, st.stored) if st.stored >= 0 else st.rows_end)
        return torch.stack([self.states[s.seq_id].last_out for s in seqs])

    def _draft_rows(self, states: list[DraftState], items: list[RowSource]):
        """The draft's rows for `items` (one per sequence): the output of each sequence's newest row
        (the only one read: `DraftHead.decode_newest`), every new row's key and value, rows per
        sequence and tokens per sequence the compressor took away. Text alone goes to the C++ kernel
        whole (ids and features in, rows fused there); otherwise the rows are fused here, then run
        through the kernel, a captured graph or eager. A sequence's newest row is the token the
        last step sampled, never compressed away: every sequence has rows."""
        native = self.grow_step.catch_up_text(states, items)
        if native is not None:
            return (*native, [len(src.ids) for src in items], [0] * len(items))
        rows = catch_up_rows(self.draft, items, self.visual_reports)
        captured = self.grow_step.catch_up(states, rows.x, rows.positions, rows.lengths)
        if captured is None:
            newest = torch.tensor(list(itertools.accumulate(rows.lengths)), device=rows.x.device) - 1
            captured = self.draft.decode_newest(rows.x, rows.positions, newest,
                                                NewestRowAttention(states, rows.lengths, self._no_rows()))
        return (*captured, rows.lengths, rows.removed)

    def _source(self, seq: Sequence, start: int, end: int, features: torch.Tensor) -> RowSource:
        src = RowSource(seq.tokens(start + 1, end + 1), features, start, seq.mm, key=seq.request_id)
        if seq.mm is not None and self.images is not None:
            _, k0, k1 = seq.mm.image_rows_in(start + 1, end + 1)
            src.image_embeds = self.images.embeds_of(seq) if k1 > k0 else None
        return src

    def _no_rows(self) -> torch.Tensor:
        c = self.draft.config
        return torch.empty(0, c.num_kv_heads, c.head_dim, device=self.draft.target.device, dtype=self.draft.target.dtype)

    def _grow(self, seqs: list[Sequence], root_out: torch.Tensor, depths: list[int], shape: TreeShape) -> list[DraftTree]:
        """EAGLE-2 expansion (grow.py): one draft forward per depth over every sequence's frontier."""
        roots_pos = torch.tensor([s.num_tokens - 1 + (s.mm.rope_delta if s.mm is not None else 0) for s in seqs],
                                 device=root_out.device)
        search = self.grow_step.tree([self.states[s.seq_id] for s in seqs], root_out, roots_pos, shape.top_k,
                                     max(depths), self._no_rows(), graph_depth=shape.depth)
        return search.select([s.token(s.num_tokens - 1) for s in seqs], shape.num_nodes, depths)

    # ---- after verification -----------------------------------------------------------------------
    def settle(self, seq: Sequence, verdict: Verdict) -> None:
        """Keep the accepted rows' keys and values, free the rest. seq.num_computed is still the
        root's position; the emitted tokens are already appended."""
        bs, table, root = self.blocks.block_size, seq.block_table, seq.num_computed
        moves = [(root + row, root + i) for i, row in enumerate(verdict.rows) if row != i]
        if moves:
            slot = lambda p: table[p // bs] * bs + p % bs  # noqa: E731
            dev = self.draft.target.device
            self.kv.copy_slots(torch.tensor([slot(s) for s, _ in moves], device=dev),
                               torch.tensor([slot(d) for _, d in moves], device=dev))
        self.blocks.settle(seq, len(verdict.rows))

    def record(self, seq: Sequence, verdict: Verdict, used: int) -> None:
        """Count a verification whose first `used` tokens the sequence kept (the rest lay past a stop
        or the length limit). The accepted length counts them all: they were accepted (EAGLE's
        tau); `spec_kept_tokens` counts what reached outputs (a round past a stop keeps fewer). The policy
        learns from the kept ones: a tree's worth is the tokens it adds to the output, and with
        short answers the last tree of each runs past the end."""
        self.rounds += 1
        self.emitted += len(verdict.tokens)
        self.kept += used
        log = self.step_log
        if log is not None:
            if self.states[seq.seq_id].first > 0:  # the draft's context restarted mid-sequence
                log.cold_emitted += used
                log.cold_verified += 1
            else:
                log.emitted += used
                log.verified += 1

    def step_done(self, scheduled: list[tuple[Sequence, int]], seconds: float) -> None:
        """The step that the last `propose` planned took `seconds`, which teaches the policy. Prefill
        chunks in the step are told apart (adaptive.py takes them out at the price of a row)."""
        log, self.step_log = self.step_log, None
        if log is not None:
            log.prefill_rows = sum(n for _, n in scheduled) - log.num_seqs
            self.policy.observe(log, seconds)

    @property
    def accepted_length(self) -> float:
        """Tokens emitted per verification (accepted drafts plus the target's own token)."""
        return self.emitted / self.rounds if self.rounds else 0.0

    def stats(self) -> dict[str, float]:
        return {"spec_rounds": self.rounds, "spec_draft_tokens": self.drafted, "spec_emitted_tokens": self.emitted,
                "spec_kept_tokens": self.kept,
                "spec_accepted_length": self.accepted_length, "spec_steps_without_trees": self.steps_without_trees,
                "spec_draft_compiled": self.grow_step.compiled, "spec_draft_compile_seconds": self.grow_step.compile_seconds,
                "spec_draft_kernel": self.grow_step.native,
                **(self.grow_step.graphs.stats() if self.grow_step.graphs is not None else {}),
                **self.policy.stats()}
