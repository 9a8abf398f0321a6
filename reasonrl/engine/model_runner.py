"""`ModelRunner`: turns one step's scheduled sequences into a flat batch, runs the model, samples.

All new tokens of the step (prefill chunks, decode tokens and draft trees alike) are concatenated
into one (N,) batch; `AttentionMetadata` says which rows belong to which sequence and where their
keys and values live. A sequence samples when this step computes its last pending token; a
sequence with a draft tree is verified instead (spec/verify.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from reasonrl.engine.attention import AttentionMetadata, PagedAttention
from reasonrl.engine.compiled import FastDecode
from reasonrl.engine.cpu_forward import CPUForward
from reasonrl.engine.eviction import Evictor
from reasonrl.engine.grammar import Grammars, mask_logits
from reasonrl.engine.images import Images
from reasonrl.engine.kv.base import KVFormat
from reasonrl.engine.penalties import adjust
from reasonrl.engine.sampler import SamplingBatch, sample
from reasonrl.engine.sequence import Sequence
from reasonrl.engine.spec.tree import DraftTree
from reasonrl.engine.spec.verify import Verdict, verify
from reasonrl.models.model import DecoderLM


PROMPT_ROWS = 256
"""Prompt rows whose full-vocabulary log-probs are materialised at once (prompt_logprobs)."""


@dataclass
class Sampled:
    token: int
    logprob: float
    top: dict[int, float] | None = None


@dataclass
class StepBatch:
    input_ids: torch.Tensor  # (N,)
    positions: torch.Tensor  # (N,), or (3, N) M-RoPE rows when a prompt with images is prefilled
    meta: AttentionMetadata
    sample_rows: list[int]  # row of each sampling sequence's last new token
    sample_seqs: list[Sequence]
    model_inputs: dict = field(default_factory=dict)  # image_embeds, image_rows (engine/images.py)


@dataclass
class PromptLogprobs:
    """Log-probs of prompt tokens first .. first + len(logprobs) - 1, computed in one step."""

    first: int
    logprobs: list[float]
    ranks: list[int]  # 1 + how many tokens the model found likelier than the prompt's
    top: list[dict[int, float]] | None = None


@dataclass
class StepResult:
    sampled: dict[int, Sampled]  # by seq_id, for sequences that sampled one token
    verdicts: dict[int, Verdict]  # by seq_id, for sequences that verified a draft tree
    hidden: torch.Tensor  # (N, hidden) the target's final hidden states of every row
    batch: StepBatch
    prompt: dict[int, PromptLogprobs] = field(default_factory=dict)  # by seq_id (params.prompt_logprobs)


class ModelRunner:
    def __init__(self, model: DecoderLM, kv: KVFormat, block_size: int, evictor: Evictor | None = None,
                 images: Images | None = None, eos_ids: set[int] | None = None, grammars: Grammars | None = None,
                 latents=None, fast: FastDecode | CPUForward | None = None):
        self.model, self.kv, self.block_size = model, kv, block_size
        self.fast = fast  # compiled / CUDA-graph decode forward (engine/compiled.py), or the C++ one (cpu_forward.py)
        self.evictor = evictor  # records the queries token eviction selects with
        self.images = images  # image embeddings and M-RoPE positions of prompts with images
        self.latents = latents  # LatentReasoning: latent positions' input embeddings (engine/latent.py)
        self.device = model.device
        self.eos_ids = eos_ids if eos_ids is not None else set(model.config.stop_token_ids)  # what min_tokens holds back
        self.grammars = grammars  # fills structured outputs' masks in parallel (engine/grammar.py)

    def prepare(self, scheduled: list[tuple[Sequence, int]], trees: dict[int, DraftTree] | None = None) -> StepBatch:
        """A tree's rows sit at the slots after its root, in row order, at positions root + depth."""
        bs, trees = self.block_size, trees or {}
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_start, context_lens, tables, masks = [0], [], [], []
        sample_rows, sample_seqs = [], []
        for seq, n in scheduled:
            start, table, tree = seq.num_computed, seq.block_table, trees.get(seq.seq_id)
            if tree is not None:
                n = tree.size
                ids += tree.tokens
                positions += [start + d for d in tree.depths]
            else:
                ids += seq.tokens(start, start + n)
                positions += range(start, start + n)
            at = start - seq.num_evicted  # cache index of the first new token
            slots += [table[c // bs] * bs + c % bs for c in range(at, at + n)]
            query_start.append(query_start[-1] + n)
            context_lens.append(at + n)
            tables.append(table)
            masks.append(None if tree is None else tree.mask(self.device))
            if tree is None and start + n == seq.num_tokens:
                sample_rows.append(query_start[-1] - 1)
                sample_seqs.append(seq)
        width, rows, seqs = max(len(t) for t in tables), len(ids), len(tables)
        # two host-to-device copies a step, not five (on a GPU each is a synchronous transfer); each
        # part starts 16-byte aligned, as a kernel specialised on aligned pointers expects
        r, n = rows + rows % 2, seqs + (-seqs) % 4
        longs = torch.tensor(ids + [0] * (r - rows) + positions + [0] * (r - rows) + slots, dtype=torch.long,
                             device=self.device)
        ints = torch.tensor(context_lens + [0] * (n - seqs) + [b for t in tables for b in t + [0] * (width - len(t))],
                            dtype=torch.int32, device=self.device)
        meta = AttentionMetadata(
            slot_mapping=longs[2 * r:],
            query_start=query_start,
            context_lens=context_lens,
            block_tables=ints[n:].view(seqs, width),
            context_lens_t=ints[:seqs],
            masks=masks if trees else None,
        )
        batch = StepBatch(longs[:rows], longs[r: r + rows], meta, sample_rows, sample_seqs)
        if self.images is not None:
            batch.positions, batch.model_inputs = self.images.step_inputs(scheduled, query_start, batch.positions)
        if self.latents is not None:
            batch.model_inputs = self.latents.step_inputs(scheduled, query_start, batch.model_inputs)
        return batch

    @torch.no_grad()
    def run(self, scheduled: list[tuple[Sequence, int]], trees: dict[int, DraftTree] | None = None,
            rule: str = "coupled") -> StepResult:
        """Run one step: sample the sequences that finished their pending tokens, verify the trees
        (sampled ones by `rule`, see spec/verify.py)."""
        batch = self.prepare(scheduled, trees)
        attn = PagedAttention(self.kv, batch.meta)
        if self.evictor is not None:
            attn = self.evictor.recording(attn, scheduled, batch.meta.query_start)
        hidden = None
        if self.fast is not None and self.evictor is None:
            hidden = self.fast.forward(batch.input_ids, batch.positions, batch.meta, batch.model_inputs)
        if hidden is None:
            hidden = self.model(batch.input_ids, batch.positions, attn, **batch.model_inputs)
        verdicts = self._verify(scheduled, trees, batch, hidden, rule) if trees else {}
        return StepResult(self._sample(batch, hidden), verdicts, hidden, batch, self._prompt_logprobs(scheduled, batch, hidden))

    def _prompt_logprobs(self, scheduled, batch: StepBatch, hidden: torch.Tensor) -> dict[int, PromptLogprobs]:
        """The row of prompt position p predicts token p + 1: each prefilled prompt row but the
        prompt's last gives the next prompt token's log-prob, log_softmax(raw logits)."""
        out = {}
        for b, (seq, n) in enumerate(scheduled):
            start, prompt_len = seq.num_computed, len(seq.prompt_ids)
            last = min(start + n, prompt_len - 1)  # rows start .. last - 1 have a prompt token after them
            if seq.prompt_logprobs is None or last <= start:
                continue
            lo = batch.meta.query_start[b]
            targets = torch.tensor(seq.prompt_ids[start + 1: last + 1], device=hidden.device)
            values, ranks, tops = [], [], []
            for i in range(0, last - start, PROMPT_ROWS):  # bounded (rows, vocab) logits at a time
                logprobs = self.model.compute_logits(hidden[lo + i: lo + min(i + PROMPT_ROWS, last - start)]).float().log_softmax(-1)
                chosen = logprobs.gather(1, targets[i: i + PROMPT_ROWS, None])
                values += chosen[:, 0].tolist()
                ranks += ((logprobs > chosen).sum(-1) + 1).tolist()
                if k := seq.params.prompt_logprobs:
                    top = logprobs.topk(k, dim=-1)
                    tops += [dict(zip(ids, vals)) for ids, vals in zip(top.indices.tolist(), top.values.tolist())]
            out[seq.seq_id] = PromptLogprobs(start + 1, values, ranks, tops if seq.params.prompt_logprobs else None)
        return out

    def _verify(self, scheduled, trees, batch: StepBatch, hidden: torch.Tensor, rule: str) -> dict[int, Verdict]:
        spans = [(seq, batch.meta.query_start[b], batch.meta.query_start[b + 1])
                 for b, (seq, _) in enumerate(scheduled) if seq.seq_id in trees]
        logits = self.model.compute_logits(torch.cat([hidden[lo:hi] for _, lo, hi in spans]))
        out, row = {}, 0
        for seq, lo, hi in spans:
            out[seq.seq_id] = verify(trees[seq.seq_id], logits[row: row + hi - lo], seq.params, seq.seed,
                                     len(seq.output_ids), rule)
            row += hi - lo
        return out

    def _sample(self, batch: StepBatch, hidden: torch.Tensor) -> dict[int, Sampled]:
        if not batch.sample_seqs:
            return {}
        logits = adjust(self.model.compute_logits(hidden[batch.sample_rows]), batch.sample_seqs, self.eos_ids)
        logits = mask_logits(logits, batch.sample_seqs, self.eos_ids, self.grammars)
        tokens, logprobs, top = sample(logits, self.sampling_batch(batch.sample_seqs))
        # one device-to-host transfer (ids below 2^53 are exact in float64, as float32 log-probs are)
        tokens, logprobs = torch.stack((tokens.double(), logprobs.double())).tolist()
        tokens = [int(t) for t in tokens]
        out = {}
        for i, seq in enumerate(batch.sample_seqs):
            tops = None
            if top is not None and seq.params.logprobs:
                k = seq.params.logprobs
                tops = dict(zip(top[0][i, :k].tolist(), top[1][i, :k].tolist()))
            out[seq.seq_id] = Sampled(tokens[i], logprobs[i], tops)
        return out

    def sampling_batch(self, seqs: list[Sequence]) -> SamplingBatch:
        """The rows' parameters in two host-to-device copies (floats, longs); none when every row is
        greedy (building them was about 5% of a batch-1 step of the demo policy, docs/benchmarks.md)."""
        params = [s.params for s in seqs]
        if all(p.greedy for p in params):
            return SamplingBatch.greedy(max(p.logprobs for p in params))
        floats = torch.tensor([[p.temperature for p in params], [p.top_p for p in params], [p.min_p for p in params]],
                              dtype=torch.float32, device=self.device)
        longs = torch.tensor([[max(p.top_k, 0) for p in params], [s.seed for s in seqs],
                              [len(s.output_ids) for s in seqs]], dtype=torch.long, device=self.device)
        return SamplingBatch(
            temperature=floats[0], top_k=longs[0], top_p=floats[1], min_p=floats[2], seeds=longs[1], steps=longs[2],
            num_top=max(p.logprobs for p in params),
            any_filter=any(p.top_k > 0 or p.top_p < 1 or p.min_p > 0 for p in params if not p.greedy),
            all_greedy=all(p.greedy for p in params),
        )
