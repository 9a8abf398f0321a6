"""The text side of text-to-image: a small language model whose per-layer hidden states condition
the image generators, as Instella-T2I conditions on a frozen AMD-OLMo-1B.

The language model is reasonrl's own `DecoderLM` (Qwen2 architecture, tiny), with a byte-level BPE
tokenizer, trained here on the prompts (next-token prediction; nothing can be downloaded) by
`TextJob`, a resumable run like the other image models' (gen/run.py), and then frozen.
`TextEncoder.encode` runs it once over a batch of prompts and returns the output of every decoder
layer: block i of a generator reads layer i (Instella takes `hidden_states[1:]`).
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

import numpy as np
import torch
import torch.nn.functional as F

from reasonrl.config import min_ints
from reasonrl.models.loader import load_model, load_weights, save_model
from reasonrl.models.model import CausalAttention, DecoderLM
from reasonrl.models.tiny import SPECIAL_TOKENS, init_weights, make_tokenizer, tiny_config
from reasonrl.models.tokenizer import Tokenizer
from reasonrl.rl.config import OptimSection
from reasonrl.rl.update import make_optimizer
from reasonrl.vision.gen.images import ImageConfig, draw_scene
from reasonrl.vision.gen.prompt import prompt
from reasonrl.vision.gen.run import JobState

BOS = "<|im_start|>"
MIN_VOCAB = 256 + len(SPECIAL_TOKENS)  # the BPE vocabulary starts with every byte and the special tokens


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
        min_ints(self, {"steps": 1, "prompts_per_step": 1, "vocab_size": MIN_VOCAB})
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


HELD_OUT_SEED = 7 * 10 ** 6  # held-out prompts come from a seed the training stream never uses


def draw_prompts(rng: np.random.Generator, images: ImageConfig, n: int) -> list[str]:
    """The prompts of n random scenes drawn from `rng`."""
    return [prompt(draw_scene(rng, images)) for _ in range(n)]


class TextJob(JobState):
    """Training the conditioning language model as a resumable run (gen/run.py): BPE on the first
    2000 prompts of the seeded stream, then each step next-token prediction plus the identity probe
    on the stream's next `prompts_per_step` prompts (the stream's position is checkpointed)."""

    def __init__(self, cfg: TextTrainConfig, images: ImageConfig):
        self.cfg, self.steps, self.step_count = cfg, cfg.steps, 0
        self.images, self.stream = images, np.random.default_rng(cfg.seed)
        self.tokenizer = make_tokenizer(draw_prompts(self.stream, images, 2000), vocab_size=cfg.vocab_size)
        torch.manual_seed(cfg.seed)
        self.model = init_weights(DecoderLM(tiny_config(
            "qwen2", self.tokenizer.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_heads,
            max_position_embeddings=256, tie_word_embeddings=cfg.tie_embeddings,
            eos_token_ids=self.tokenizer.eos_token_ids)), seed=cfg.seed)
        self.probe = torch.nn.Linear(cfg.hidden_size, self.tokenizer.vocab_size) if cfg.identity_weight else None
        self.encoder = TextEncoder(self.model, self.tokenizer)  # freezes the model: unfrozen below for training
        self.model.train().requires_grad_(True)
        params = [*self.model.parameters(), *(self.probe.parameters() if self.probe is not None else ())]
        self.optimizer, self.scheduler = make_optimizer(
            params, OptimSection(lr=cfg.lr, schedule="cosine", warmup_steps=20), cfg.steps)
        self.held = draw_prompts(np.random.default_rng(HELD_OUT_SEED + cfg.seed), images, 256)

    def losses(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Next-token loss (each prompt ends with EOS) and identity-probe loss (None without a probe)."""
        ids, mask = self.encoder.ids(prompts)
        targets = torch.cat([ids[:, 1:], ids.new_full((len(ids), 1), -100)], 1)
        targets[:, :-1][~mask[:, 1:]] = -100
        targets[torch.arange(len(ids)), mask.sum(1) - 1] = self.tokenizer.eos_token_ids[0]  # learn to end the prompt
        states = layer_states(self.model, ids)
        logits = self.model.compute_logits(self.model.norm(states[-1]))
        next_loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        if self.probe is None:
            return next_loss, None
        return next_loss, identity_loss(self.probe, states, ids.masked_fill(~mask, -100))

    def train_step(self) -> dict[str, float]:
        next_loss, identity = self.losses(draw_prompts(self.stream, self.images, self.cfg.prompts_per_step))
        self.optimizer.zero_grad(set_to_none=True)
        (next_loss if identity is None else next_loss + self.cfg.identity_weight * identity).backward()
        self.optimizer.step()
        self.scheduler.step()
        self.step_count += 1
        metrics = {"loss": float(next_loss.detach()), "lr": self.scheduler.get_last_lr()[0]}
        return metrics if identity is None else {**metrics, "identity_loss": float(identity.detach())}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        next_loss, identity = self.losses(self.held)
        metrics = {"eval_loss": float(next_loss)}
        return metrics if identity is None else {**metrics, "eval_identity_loss": float(identity)}

    def save(self, path: Path) -> Path:
        return save_model(self.model, path, self.tokenizer)  # the probe's head is not part of the model

    def load(self, path: Path) -> None:
        load_weights(self.model, path)

    def state_dict(self) -> dict:
        probe = self.probe.state_dict() if self.probe is not None else None
        return {**super().state_dict(), "probe": probe, "stream": self.stream.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.probe is not None:
            self.probe.load_state_dict(state["probe"])
        self.stream.bit_generator.state = state["stream"]


def identity_loss(probe: torch.nn.Module, states: list[torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """Mean over layers of the cross-entropy of predicting each position's own token (ids, -100:
    padding) from that layer's state: it keeps words that predict nothing apart."""
    return sum(F.cross_entropy(probe(s).flatten(0, 1), ids.flatten(), ignore_index=-100) for s in states) / len(states)
