"""`ModelRunner`: turns one step's scheduled sequences into a flat batch, runs the model, samples.

All new tokens of the step (prefill chunks and decode tokens alike) are concatenated into one
(N,) batch; `AttentionMetadata` says which rows belong to which sequence and where their keys and
values live. A sequence samples when this step computes its last pending token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reasonrl.engine.attention import AttentionMetadata, PagedAttention
from reasonrl.engine.kv.base import KVFormat
from reasonrl.engine.sampler import SamplingBatch, sample
from reasonrl.engine.sequence import Sequence
from reasonrl.models.model import DecoderLM


@dataclass
class Sampled:
    token: int
    logprob: float
    top: dict[int, float] | None = None


@dataclass
class StepBatch:
    input_ids: torch.Tensor  # (N,)
    positions: torch.Tensor  # (N,)
    meta: AttentionMetadata
    sample_rows: list[int]  # row of each sampling sequence's last new token
    sample_seqs: list[Sequence]


class ModelRunner:
    def __init__(self, model: DecoderLM, kv: KVFormat, block_size: int):
        self.model, self.kv, self.block_size = model, kv, block_size
        self.device = model.device

    def prepare(self, scheduled: list[tuple[Sequence, int]], masks: list | None = None) -> StepBatch:
        bs = self.block_size
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_start, context_lens, tables = [0], [], []
        sample_rows, sample_seqs = [], []
        for seq, n in scheduled:
            start, table = seq.num_computed, seq.block_table
            ids += seq.tokens(start, start + n)
            positions += range(start, start + n)
            slots += [table[p // bs] * bs + p % bs for p in range(start, start + n)]
            query_start.append(query_start[-1] + n)
            context_lens.append(start + n)
            tables.append(table)
            if start + n == seq.num_tokens:
                sample_rows.append(query_start[-1] - 1)
                sample_seqs.append(seq)
        width = max(len(t) for t in tables)
        dev = self.device
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=dev),
            query_start=query_start,
            context_lens=context_lens,
            block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32, device=dev),
            context_lens_t=torch.tensor(context_lens, dtype=torch.int32, device=dev),
            masks=masks,
        )
        return StepBatch(torch.tensor(ids, dtype=torch.long, device=dev), torch.tensor(positions, dtype=torch.long, device=dev),
                         meta, sample_rows, sample_seqs)

    @torch.no_grad()
    def run(self, scheduled: list[tuple[Sequence, int]]) -> dict[int, Sampled]:
        """Run one step; returns the sampled token of each sequence that sampled, by seq_id."""
        batch = self.prepare(scheduled)
        hidden = self.model(batch.input_ids, batch.positions, PagedAttention(self.kv, batch.meta))
        if not batch.sample_seqs:
            return {}
        logits = self.model.compute_logits(hidden[batch.sample_rows])
        tokens, logprobs, top = sample(logits, self.sampling_batch(batch.sample_seqs))
        tokens, logprobs = tokens.tolist(), logprobs.tolist()
        out = {}
        for i, seq in enumerate(batch.sample_seqs):
            tops = None
            if top is not None and seq.params.logprobs:
                k = seq.params.logprobs
                tops = dict(zip(top[0][i, :k].tolist(), top[1][i, :k].tolist()))
            out[seq.seq_id] = Sampled(tokens[i], logprobs[i], tops)
        return out

    def sampling_batch(self, seqs: list[Sequence]) -> SamplingBatch:
        dev = self.device
        params = [s.params for s in seqs]
        return SamplingBatch(
            temperature=torch.tensor([p.temperature for p in params], dtype=torch.float32, device=dev),
            top_k=torch.tensor([max(p.top_k, 0) for p in params], dtype=torch.long, device=dev),
            top_p=torch.tensor([p.top_p for p in params], dtype=torch.float32, device=dev),
            min_p=torch.tensor([p.min_p for p in params], dtype=torch.float32, device=dev),
            seeds=torch.tensor([s.seed for s in seqs], dtype=torch.long, device=dev),
            steps=torch.tensor([len(s.output_ids) for s in seqs], dtype=torch.long, device=dev),
            num_top=max(p.logprobs for p in params),
            any_filter=any(p.top_k > 0 or p.top_p < 1 or p.min_p > 0 for p in params if not p.greedy),
        )
