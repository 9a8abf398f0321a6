"""Token eviction inside the engine: SnapKV (arXiv 2404.14469) on each sequence's prompt.

Once a sequence's prompt is prefilled, every layer keeps, per KV head, the `budget` prompt
positions the last `window` prompt queries attend to most (`kv/snapkv.snapkv_select`: summed over
the window and the GQA group, average-pooled) plus the window itself, and drops the rest:

- the kept entries are written into fresh blocks, head by head (cache entry i of KV head h is that
  head's i-th kept token, so every head holds the same number of entries and the paged layout is
  unchanged); the prompt's blocks are let go, and its full blocks stay in the prefix cache,
  untouched, for the prompt's next sample;
- tokens after the prompt are cached whole, after the kept entries: token i sits at cache index
  i - num_evicted. Positions (RoPE) are the tokens' own; keys are cached already rotated.

A prompt of at most budget + window tokens is kept whole.

Where it hooks into the engine:
- prefill chunks end at the prompt's end (`prepare` sets the sequence's `chunk_boundary`), so the eviction runs right
  after the step that computes the last prompt token and before any later token is prefilled: a
  preempted or resumed sequence (prompt plus earlier output, re-prefilled) gets the cache an
  uninterrupted run has;
- the window's queries are recorded in every layer while it is prefilled (`recording`), over as
  many chunks as it spans; admission never serves the window from the prefix cache
  (`reuse_before`);
- storage goes through the format (`KVFormat.read_prefix` / `write_entries`). Dense holds exactly
  SnapKV's cache. SPARK (`kv/spark.py`) prunes the kept keys' channels with |Q| of the same window
  queries, the paper's composition; its prompt blocks, already pruned when they filled, are read
  back restored and pruned again (the same channels win unless |Q| moved).

Not combined with speculative decoding (draft trees index the cache by position).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reasonrl.engine.kv.snapkv import snapkv_select
from reasonrl.engine.sequence import Sequence


@dataclass(frozen=True)
class EvictionConfig:
    budget: int
    """Prompt tokens each KV head keeps per layer, besides the window."""
    window: int = 32
    kernel_size: int = 5

    def __post_init__(self):
        for name, low in (("budget", 0), ("window", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"EngineConfig.evict_{name} must be an integer >= {low}, got {value!r}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"eviction kernel_size must be a positive odd integer, got {self.kernel_size!r}")


@dataclass
class _Capture:
    """What the step's attention records for one sequence that will evict."""
    seq: Sequence
    window: slice  # rows of this step's window queries ...
    window_dst: slice  # ... and where they go in the sequence's window buffer
    rows: slice | None  # the step ends the prompt: rows of its prompt tokens, selected at every layer
    start: int  # first prompt token of the step
    cached: torch.Tensor | None  # the step ends the prompt: blocks of tokens 0..start-1, cached earlier


class _Recording:
    """The step's attention, recording the window queries of the sequences that will evict and, in
    the step that ends a prompt, selecting its kept entries layer by layer."""

    def __init__(self, attn, evictor: Evictor, captures: list[_Capture]):
        self.attn, self.evictor, self.captures = attn, evictor, captures

    def __call__(self, layer, q, k, v):
        for c in self.captures:
            self.evictor.window_q[c.seq.seq_id][layer, c.window_dst] = q[c.window]
        out = self.attn(layer, q, k, v)
        for c in self.captures:  # after the writes: a prompt block served from the prefix cache may be
            if c.rows is not None:  # one another sequence writes in this very step
                self.evictor.select(layer, c.seq, k[c.rows], v[c.rows], c.start, c.cached)
        return out


class Evictor:
    def __init__(self, cfg: EvictionConfig, kv, blocks):
        self.cfg, self.kv, self.blocks = cfg, kv, blocks
        self.window_q: dict[int, torch.Tensor] = {}  # seq_id -> (layers, window, Hq, D) while prefilling
        self.kept: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}  # seq_id -> per layer (n, Hkv, D) k, v
        self.num_evictions = 0  # a preempted sequence is evicted again when it is re-prefilled
        self.num_evicted_tokens = 0  # cache entries dropped, over every eviction so far
        self.num_skipped = 0
        self.num_redone = 0  # re-prefills that could not compact and were prefilled again in blocks of their own
        self.whole: set[int] = set()  # seq_ids whose eviction was skipped: they keep their prompt whole for good
        self.evicted: set[int] = set()  # seq_ids evicted once: re-prefilled, they must be evicted again

    def applies(self, seq: Sequence) -> bool:
        """The prompt is longer than what eviction keeps, it has not been evicted yet, and its
        eviction was not skipped (a sequence that decoded on its whole prompt must not switch to the
        evicted cache when it is re-prefilled after a preemption)."""
        return (not seq.num_evicted and seq.seq_id not in self.whole
                and len(seq.prompt_ids) > self.cfg.budget + self.cfg.window)

    def prepare(self, seq: Sequence) -> None:
        """A new sequence: if it will evict, its prefill chunks end at the prompt's end (so the
        eviction runs right after the step that computes the last prompt token, before any later
        token is prefilled) and the prefix cache never serves its window."""
        if self.applies(seq):
            seq.chunk_boundary = len(seq.prompt_ids)
            limit = len(seq.prompt_ids) - self.cfg.window
            seq.reuse_before = limit if seq.reuse_before is None else min(seq.reuse_before, limit)

    def recording(self, attn, scheduled: list[tuple[Sequence, int]], query_start: list[int]):
        """`attn`, recording what the sequences that will evict need from this step."""
        captures = []
        for b, (seq, n) in enumerate(scheduled):
            if not self.applies(seq):
                continue
            prompt, start = len(seq.prompt_ids), seq.num_computed
            first = prompt - self.cfg.window  # the window is prompt tokens first..prompt-1
            lo, hi = max(start, first), min(start + n, prompt)
            if lo >= hi:
                continue
            if seq.seq_id not in self.window_q:
                c = self.kv.cfg
                self.window_q[seq.seq_id] = torch.zeros(c.num_layers, self.cfg.window, c.num_heads, c.head_dim,
                                                        dtype=self.kv.dtype, device=self.kv.device)
            at = query_start[b] - start  # row of token 0 in this step's batch
            ends = start + n == prompt  # the chunker cuts at the prompt's end, never beyond
            cached = None
            if ends and start:  # one host-to-device copy per step, read in every layer
                cached = torch.tensor(seq.block_table[: -(-start // self.blocks.block_size)], dtype=torch.long,
                                      device=self.kv.device)
            captures.append(_Capture(seq, slice(at + lo, at + hi), slice(lo - first, hi - first),
                                     slice(at + start, at + prompt) if ends else None, start, cached))
        return _Recording(attn, self, captures) if captures else attn

    @torch.no_grad()
    def select(self, layer: int, seq: Sequence, k_new: torch.Tensor, v_new: torch.Tensor, start: int,
               cached: torch.Tensor | None) -> None:
        """One layer of the step that ends the prompt: the kept entries of each KV head, from this
        step's exact keys and values (prompt tokens start..) and the cached ones before them, in
        blocks `cached` (read back through the format: restored, for a format that prunes or
        quantizes)."""
        k, v = k_new, v_new
        if start:
            k_old, v_old = self.kv.read_prefix(layer, cached, start)
            k, v = torch.cat([k_old.to(k.dtype), k]), torch.cat([v_old.to(v.dtype), v])
        keep = snapkv_select(self.window_q[seq.seq_id][layer], k, self.cfg.budget, self.cfg.kernel_size)  # (Hkv, n)
        idx = keep.T[..., None].expand(-1, -1, k.shape[-1])  # (n, Hkv, D): entry i of head h
        self.kept.setdefault(seq.seq_id, []).append((k.gather(0, idx), v.gather(0, idx)))

    def after_step(self, seq: Sequence) -> None:
        """Evict the prompt once all of it is computed: its kept entries replace its blocks.

        When the blocks it frees (those no other sequence shares) and the free ones cannot hold the
        kept entries:
        - a sequence that never decoded on an evicted cache keeps its prompt whole
          (`evictions_skipped`): correct, only not smaller, and for good: re-prefilled after a
          preemption, it is rebuilt whole again;
        - a sequence evicted before (re-prefilled after a preemption), or resumed with tokens
          decoded after its first, must not go on from its whole prompt (its tokens would come from
          two caches): it lets its blocks go and is prefilled again from its first token, in blocks
          of its own (`private_blocks`: the prefix cache neither serves nor shares them), which it
          can always compact (`evictions_redone`). It stays running: the scheduler finds it blocks,
          or preempts it, as for any prefill."""
        kept = self.kept.pop(seq.seq_id, None)
        if kept is None:
            return
        window_q = self.window_q.pop(seq.seq_id)
        prompt, bs, n = len(seq.prompt_ids), self.blocks.block_size, kept[0][0].shape[0]
        assert len(kept) == self.kv.cfg.num_layers and seq.num_computed == prompt
        if not self.blocks.can_compact(seq, n):
            if seq.seq_id in self.evicted or seq.num_resumed > 1:
                # held by it alone, its prompt's blocks (budget + window tokens and more) hold the kept entries
                assert not seq.private_blocks, "a sequence holding only its own blocks always compacts"
                assert seq.output_ids  # output still to prefill: this step sampled nothing
                self.blocks.release(seq)
                seq.num_cached = 0
                seq.private_blocks = True
                self.num_redone += 1
                return
            self.num_skipped += 1
            self.whole.add(seq.seq_id)
            seq.chunk_boundary = None  # (its reuse_before stays: it only narrows what the prefix cache serves)
            return
        new_table = torch.tensor(self.blocks.compact(seq, n), dtype=torch.long, device=self.kv.device)
        slots = (new_table[:, None] * bs + torch.arange(bs, device=self.kv.device)).flatten()[:n]
        for layer, (k, v) in enumerate(kept):
            self.kv.write_entries(layer, slots, k, v, window_q[layer])
        seq.num_evicted = prompt - n
        self.evicted.add(seq.seq_id)
        self.num_evictions += 1
        self.num_evicted_tokens += prompt - n

    def forget(self, seq: Sequence) -> None:
        self.whole.discard(seq.seq_id)
        self.evicted.discard(seq.seq_id)
        self.window_q.pop(seq.seq_id, None)
        self.kept.pop(seq.seq_id, None)

    def stats(self) -> dict[str, int]:
        return {"evictions": self.num_evictions, "kv_evicted_tokens": self.num_evicted_tokens,
                "evictions_skipped": self.num_skipped, "evictions_redone": self.num_redone}
