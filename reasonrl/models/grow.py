"""Add special tokens to a trained checkpoint: the tokenizer learns them, the embeddings grow.

A model trained without some special tokens (e.g. LVR's `<|lvr_start|>`, `<|lvr|>`, `<|lvr_end|>`,
models/tiny_vlm.py LVR_TOKENS) gets them here: the tokenizer appends them after its vocabulary,
and the input embedding and LM head gain one row per new id past the model's vocabulary (a model
whose vocabulary is already padded past the tokenizer's keeps its size). New rows start at the
mean of the existing input embeddings (the LM head too, unless it is tied), so that a new token
neither dominates nor is unreachable before fine-tuning teaches it.
"""

from __future__ import annotations

import torch
from tokenizers import AddedToken
from torch import nn

from reasonrl.models.model import DecoderLM
from reasonrl.models.tokenizer import Tokenizer


def add_special_tokens(model: DecoderLM, tokenizer: Tokenizer, tokens: list[str]) -> list[int]:
    """Add `tokens` (those not there yet) to `tokenizer` as special tokens and grow `model` to hold
    them, both in place; -> the ids of `tokens`, in order."""
    new = [t for t in tokens if tokenizer.tok.token_to_id(t) is None]
    if new:
        tokenizer.tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in new])
    ids = [tokenizer.tok.token_to_id(t) for t in tokens]
    if max(ids, default=-1) >= model.config.vocab_size:
        resize_vocab(model, max(ids) + 1)
    return ids


@torch.no_grad()
def resize_vocab(model: DecoderLM, vocab_size: int) -> None:
    """Grow the input embedding and LM head to `vocab_size` rows (new rows: the mean input
    embedding; a tied head stays tied) and record the size in the model's config."""
    old = model.embed_tokens.weight
    if vocab_size < old.shape[0]:
        raise ValueError(f"resize_vocab only grows: the model has {old.shape[0]} rows, asked for {vocab_size}")
    mean = old.mean(0, keepdim=True)
    embed = nn.Embedding(vocab_size, old.shape[1], device=old.device, dtype=old.dtype)
    embed.weight.copy_(torch.cat([old, mean.expand(vocab_size - old.shape[0], -1)]))
    tied = model.lm_head.weight is old
    model.embed_tokens = embed
    if tied:
        model.lm_head.weight = embed.weight
    else:
        head = model.lm_head.weight
        grown = nn.Linear(head.shape[1], vocab_size, bias=False, device=head.device, dtype=head.dtype)
        grown.weight.copy_(torch.cat([head, head.mean(0, keepdim=True).expand(vocab_size - head.shape[0], -1)]))
        model.lm_head = grown
    model.config.vocab_size = vocab_size
