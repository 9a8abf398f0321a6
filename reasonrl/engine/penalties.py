"""Logit adjustments a request may ask for, applied before sampling: OpenAI's presence and frequency
penalties and `logit_bias`, vLLM's repetition penalty and `min_tokens`.

    logit_bias:           logit[t] += bias[t]
    min_tokens:           end-of-sequence and stop_token_ids masked until min_tokens tokens exist
    repetition (CTRL):    logit[t] /= r if logit[t] > 0 else * r                       (prompt and response tokens)
    presence / frequency: logit[t] -= presence * (count_t > 0) + frequency * count_t   (response tokens)

in this order, vLLM's (its logits processors, then repetition, frequency and presence), which is
also transformers' for a bias and the repetition penalty: a biased token is penalised too.

The sampled token and its reported log-prob then come from the adjusted logits (what the request
asked to sample from). A request with any of them does not speculate: a draft tree's positions
would each need their own counts.
"""

from __future__ import annotations

import torch

from reasonrl.engine.sequence import Sequence


def adjust(logits: torch.Tensor, seqs: list[Sequence], eos_ids: set[int]) -> torch.Tensor:
    """logits (S, V) of `seqs`' next tokens -> adjusted float32 logits (a copy when any row changes)."""
    rows = [i for i, s in enumerate(seqs) if s.params.penalizes]
    if not rows:
        return logits
    logits = logits.float().clone()
    vocab = logits.shape[1]
    for i in rows:
        logits[i] = _adjust_row(logits[i], seqs[i], eos_ids, vocab)
    return logits


def _adjust_row(row: torch.Tensor, seq: Sequence, eos_ids: set[int], vocab: int) -> torch.Tensor:
    p, dev = seq.params, row.device
    if p.logit_bias:
        ids = torch.tensor([t for t in p.logit_bias if t < vocab], dtype=torch.long, device=dev)
        row = row.index_add(0, ids, torch.tensor([float(p.logit_bias[t]) for t in ids.tolist()], dtype=row.dtype, device=dev))
    if len(seq.output_ids) < p.min_tokens:
        stops = [t for t in (set() if p.ignore_eos else eos_ids) | set(p.stop_token_ids) if t < vocab]
        row = row.index_fill(0, torch.tensor(stops, dtype=torch.long, device=dev), float("-inf")) if stops else row
    if p.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(seq.prompt_ids) | set(seq.output_ids)), dtype=torch.long, device=dev)
        vals = row[seen]
        row = row.index_put((seen,), torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty))
    if p.presence_penalty or p.frequency_penalty:
        counts = torch.bincount(torch.tensor(seq.output_ids, dtype=torch.long, device=dev), minlength=vocab)[:vocab]
        row = row - p.frequency_penalty * counts - p.presence_penalty * (counts > 0)
    return row
