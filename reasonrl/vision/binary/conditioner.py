"""The text side of text-to-image: a small language model whose per-layer hidden states condition
the image generators, as Instella-T2I conditions on a frozen AMD-OLMo-1B.

The language model is reasonrl's own `DecoderLM` (Qwen2 architecture, tiny), with a byte-level BPE
tokenizer, trained here on the prompts (next-token prediction; nothing can be downloaded) and
then frozen. `TextEncoder.encode` runs it once over a batch of prompts and returns the output of
every decoder layer: block i of a generator reads layer i (Instella takes `hidden_states[1:]`).
A prompt is `<|im_start|>` + its tokens; the empty prompt (classifier-free guidance's
unconditional branch) is `<|im_start|>` alone.

Departure, the identity probe (`identity_weight`): a pretrained language model keeps every word
apart, a tiny one trained by next-token prediction on these prompts does not. Colour and shape are
drawn independently, so "red" and "blue" say nothing about the next token and the model has no
reason to tell them apart: with tied embeddings the states of "a large red circle at the top left"
and "... blue ..." differed by 1% (layer 0; 37% for "bottom right" instead of "top left"), and a
generator conditioned on them ignored colour and shape words entirely (its teacher-forced loss
unchanged when they are swapped). So training adds an auxiliary loss: one linear head, shared by
every layer, predicts from each layer's state the token at that position (the head is discarded
afterwards; its gradient is what trains the model to keep words apart), and the embeddings are
untied: the difference becomes 17% (11% at the last layer) with next-token loss unchanged, and the
generators' held-out colour score rose from 0.13 to 0.49 (AR) and 0.55 (diffusion) at 3000 steps
(docs/benchmarks.md, "Text-to-image"). The head does the work: at test sizes, untying alone leaves
the states as close as tied ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from reasonrl.models.loader import load_model, save_model
from reasonrl.models.model import CausalAttention, DecoderLM
from reasonrl.models.tiny import init_weights, make_tokenizer, tiny_config
from reasonrl.models.tokenizer import Tokenizer
from reasonrl.rl.config import OptimSection
from reasonrl.rl.update import make_optimizer
from reasonrl.vision.gen.images import ImageConfig, draw_scene
from reasonrl.vision.gen.prompt import prompt

BOS = "<|im_start|>"


@dataclass
class TextTrainConfig:
    hidden_size: int = 64
    """Width of the language model."""
    num_layers: int = 4
    """Decoder layers (a generator has one block per layer)."""
    num_heads: int = 4
    """Attention heads."""
    vocab_size: int = 384
    """BPE vocabulary, trained on prompts (at least 259: the 256 bytes and 3 special tokens come first)."""
    steps: int = 600
    """Optimizer steps (next-token prediction plus the identity probe)."""
    prompts_per_step: int = 64
    """Fresh prompts per step."""
    lr: float = 3e-3
    """Peak AdamW learning rate (cosine schedule)."""
    seed: int = 0
    """Seeds the weights and the prompts."""
    identity_weight: float = 1.0
    """Weight of the identity probe, an auxiliary loss: one linear head, shared by all layers, predicts
    each position's own token from its state (a training-time head, not saved); 0: next-token
    prediction alone."""
    tie_embeddings: bool = False
    """Tie the output head to the input embeddings (default False: untied; a tied head pulls words
    that are predicted alike, such as the colours, together)."""

    def __post_init__(self):
        if self.identity_weight < 0:
            raise ValueError(f"identity_weight must be at least 0, got {self.identity_weight}")


class TextEncoder:
    """A frozen language model and its tokenizer, turned into per-layer conditioning states."""

    def __init__(self, lm: DecoderLM, tokenizer: Tokenizer):
        self.lm, self.tokenizer = lm.eval().requires_grad_(False), tokenizer
        self.bos = tokenizer.tok.token_to_id(BOS)

    @classmethod
    def from_dir(cls, path: str | Path) -> TextEncoder:
        return cls(load_model(path, "cpu"), Tokenizer.from_dir(path))

    @property
    def num_layers(self) -> int:
        return len(self.lm.layers)

    @property
    def width(self) -> int:
        return self.lm.config.hidden_size

    def ids(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded (B, T) token ids and the (B, T) bool mask of real tokens."""
        rows = [[self.bos] + self.tokenizer.encode(p, add_special_tokens=False) for p in prompts]
        t = max(len(r) for r in rows)
        ids = torch.full((len(rows), t), self.tokenizer.pad_token_id, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
        return ids, ids.new_tensor([[j < len(r) for j in range(t)] for r in rows], dtype=torch.bool)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The (B, T, width) output of every layer, and the (B, T) mask of real tokens."""
        ids, mask = self.ids(prompts)
        return layer_states(self.lm, ids), mask


def layer_states(lm: DecoderLM, ids: torch.Tensor) -> list[torch.Tensor]:
    """Causal forward of right-padded ids (B, T), keeping each decoder layer's output (B, T, width)."""
    b, t = ids.shape
    x = lm.embed_tokens(ids.reshape(-1))
    cos, sin = lm.rotary(torch.arange(t).repeat(b), x.dtype)
    attn, states = CausalAttention(b, t), []
    for layer in lm.layers:
        x = layer(x, cos, sin, attn)
        states.append(x.view(b, t, -1))
    return states


def prompt_stream(images: ImageConfig, seed: int):
    """Prompts of random scenes, forever, reproducible from `seed`."""
    import numpy as np

    rng = np.random.default_rng(seed)
    while True:
        yield prompt(draw_scene(rng, images))


def train_text_model(cfg: TextTrainConfig, images: ImageConfig, out: str | Path, log=None) -> Path:
    """Train the conditioning language model on prompts and save it as a checkpoint directory."""
    stream = prompt_stream(images, cfg.seed)
    tokenizer = make_tokenizer([next(stream) for _ in range(2000)], vocab_size=cfg.vocab_size)
    torch.manual_seed(cfg.seed)
    lm = init_weights(DecoderLM(tiny_config("qwen2", tokenizer.vocab_size, cfg.hidden_size, cfg.num_layers,
                                            cfg.num_heads, cfg.num_heads, max_position_embeddings=256,
                                            tie_word_embeddings=cfg.tie_embeddings,
                                            eos_token_ids=tokenizer.eos_token_ids)), seed=cfg.seed)
    probe = torch.nn.Linear(cfg.hidden_size, tokenizer.vocab_size) if cfg.identity_weight else None  # not saved
    encoder = TextEncoder(lm, tokenizer)
    lm.train().requires_grad_(True)
    params = [*lm.parameters(), *(probe.parameters() if probe is not None else ())]
    optimizer, scheduler = make_optimizer(params, OptimSection(lr=cfg.lr, schedule="cosine", warmup_steps=20), cfg.steps)
    eos = tokenizer.eos_token_ids[0]
    for step in range(cfg.steps):
        ids, mask = encoder.ids([next(stream) for _ in range(cfg.prompts_per_step)])
        targets = torch.cat([ids[:, 1:], ids.new_full((len(ids), 1), -100)], 1)
        targets[:, :-1][~mask[:, 1:]] = -100
        targets[torch.arange(len(ids)), mask.sum(1) - 1] = eos  # learn to end the prompt
        states = layer_states(lm, ids)
        logits = lm.compute_logits(lm.norm(states[-1]))
        next_loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        identity = identity_loss(probe, states, ids.masked_fill(~mask, -100)) if probe is not None else None
        optimizer.zero_grad(set_to_none=True)
        (next_loss if identity is None else next_loss + cfg.identity_weight * identity).backward()
        optimizer.step()
        scheduler.step()
        if log and (step + 1) % 100 == 0:
            probed = f", identity {identity.item():.4f}" if identity is not None else ""
            log(f"text model step {step + 1}/{cfg.steps}: loss {next_loss.item():.4f}{probed}")
    return save_model(lm.eval(), out, tokenizer)


def identity_loss(probe: torch.nn.Module, states: list[torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """Mean over layers of the cross-entropy of predicting each position's own token (ids, -100:
    padding) from that layer's state: it keeps words that predict nothing apart."""
    return sum(F.cross_entropy(probe(s).flatten(0, 1), ids.flatten(), ignore_index=-100) for s in states) / len(states)
