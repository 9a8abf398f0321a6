"""`ProcessRewardModel`: the policy's architecture plus a head that scores the end of each step.

Paper: Athena-PRM (arXiv 2506.09532) trains a PRM as per-step correctness classification; the
layout follows Qwen2.5-Math-PRM: a separator token is written after every step and a two-class
head reads the hidden state there, the step's score being the probability of the "correct" class.
Every step of a solution is scored in one forward pass.

Where this departs from them:
- The separator is `<|step|>` by default (Qwen uses `<extra_0>`); it is added to the tokenizer as
  a special token when missing, and the embedding grows by one row (initialised to the mean
  embedding) when the vocabulary has no room for it.
- The head is Linear(h, h) -> ReLU -> Linear(h, 2) on the decoder's final (normed) hidden state,
  under the tensor names `score.0.*` and `score.2.*`. We have not checked this against Qwen's
  released checkpoints (none can be downloaded here): loading one is not claimed.
- `confidence` (off by default; not in the papers): the head also reads how probable a frozen copy of
  the base model finds each step's tokens, their lowest and mean log-probability, on the seen steps
  joined as the policy writes them (no separators; `PRMScorer.confidence`). A PRM reads its
  separator's state, written after the step, and on `sums` learned which solutions look wrong rather
  than which running total is: within a problem it ranked below a uniform pick, while the policy's own
  belief in its totals ranked well (docs/benchmarks.md, "Process reward models"). The copy is saved
  under `confidence/`.

A PRM directory is a Hugging Face checkpoint of the backbone (config.json, safetensors holding the
backbone's tensors and the head's, tokenizer.json with the separator) plus `prm_config.json`
(separator, step format, length limits) and, with `confidence`, the frozen copy's checkpoint in
`confidence/`. It works the same for a `DecoderLM` and a `Qwen2_5_VL` (`confidence`: text only).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from reasonrl.config import build, positive_ints, to_dict
from reasonrl.models.loader import CheckpointError, empty_model, load_model, load_state, read_tensors, save_model
from reasonrl.models.model import DecoderLM
from reasonrl.models.qwen2_5_vl.model import Qwen2_5_VL
from reasonrl.models.qwen2_5_vl.prompt import MultimodalPrompt
from reasonrl.models.tokenizer import Tokenizer
from reasonrl.reward.prm.steps import StepFormat

CONFIG_FILE = "prm_config.json"
HEAD = "score."
CONFIDENCE_DIR = "confidence"
"""Where a PRM directory keeps the frozen copy of its base model that `confidence` reads."""
CONFIDENCE_FEATURES = 2
"""Per step: the lowest and the mean log-probability of its tokens under the frozen copy."""


@dataclass
class PRMConfig:
    separator: str = "<|step|>"
    """The token written after every step; the head reads the hidden state there."""
    max_len: int = 1024
    """Tokens of prompt plus scored response; steps that do not fit are not seen and score 0."""
    max_step_tokens: int = 256
    """A longer step is cut to its first max_step_tokens tokens (its separator still follows)."""
    chat: bool = True
    """Render prompts with the tokenizer's chat template (as the policy saw them); false: plain text."""
    confidence: bool = False
    """The head also reads the lowest and mean log-probability a frozen copy of the base model (the
    policy) gives each step's tokens, on the steps joined as the policy writes them (not in the papers;
    text models only)."""
    steps: StepFormat = field(default_factory=StepFormat, metadata={"cli": False})
    """How responses are cut into steps."""

    def __post_init__(self):
        if not isinstance(self.separator, str) or not self.separator:
            raise ValueError("PRMConfig.separator must be a non-empty string")
        positive_ints(self, ("max_len", "max_step_tokens"), "PRMConfig.")

    @classmethod
    def from_dir(cls, path: str | Path) -> PRMConfig:
        file = Path(path) / CONFIG_FILE
        if not file.is_file():
            raise FileNotFoundError(f"{path} is not a process reward model: no {CONFIG_FILE}")
        try:
            data = json.loads(file.read_text())
            steps = build(StepFormat, data.pop("steps", {}), "steps")
            cfg = build(cls, data, CONFIG_FILE)
        except (ValueError, TypeError, AttributeError) as exc:
            raise ValueError(f"{file}: {exc}") from None
        cfg.steps = steps
        return cfg


class ProcessRewardModel(nn.Module):
    def __init__(self, backbone: DecoderLM, cfg: PRMConfig, separator_id: int, reference: DecoderLM | None = None):
        """`reference`: with cfg.confidence, the frozen model whose log-probabilities the head reads."""
        super().__init__()
        if cfg.confidence and (reference is None or isinstance(backbone, Qwen2_5_VL) or isinstance(reference, Qwen2_5_VL)):
            raise ValueError("confidence features are read from a frozen copy of a text model"
                             + (": none was given" if reference is None else
                                f"; this PRM is on a vision-language model ({type(backbone).__name__})"))
        self.backbone, self.cfg, self.separator_id = backbone, cfg, separator_id
        self.reference = reference.requires_grad_(False).eval() if cfg.confidence else None
        h = backbone.config.hidden_size
        inputs = h + (CONFIDENCE_FEATURES if cfg.confidence else 0)
        self.score = nn.Sequential(nn.Linear(inputs, h), nn.ReLU(), nn.Linear(h, 2)).to(backbone.device, backbone.dtype)

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    def forward(self, input_ids: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                prompts: list[MultimodalPrompt | None] | None = None, features: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T) right-padded, separator coordinates rows, cols (K,) -> logits (K, 2).
        `prompts`: a vision-language backbone's per-row prompt with images (or None per row).
        `features`: with cfg.confidence, (K, CONFIDENCE_FEATURES) per step (`PRMScorer.confidence`)."""
        if prompts is not None and any(p is not None for p in prompts):
            hidden = self.backbone.forward_padded(input_ids, prompts)
        else:
            hidden = self.backbone.forward_padded(input_ids)  # (B, T, H)
        states = hidden[rows, cols]
        if self.cfg.confidence:
            if features is None or features.shape != (states.shape[0], CONFIDENCE_FEATURES):
                raise ValueError(f"this PRM reads {CONFIDENCE_FEATURES} confidence features per step: expected "
                                 f"{(states.shape[0], CONFIDENCE_FEATURES)}, got "
                                 f"{None if features is None else tuple(features.shape)}")
            states = torch.cat([states, features.to(states.device, states.dtype)], -1)
        return self.score(states)

    def train(self, mode: bool = True) -> ProcessRewardModel:
        super().train(mode)
        if self.reference is not None:  # frozen: always in inference mode
            self.reference.eval()
        return self

    def head_state(self) -> dict[str, torch.Tensor]:
        return {HEAD + k: v for k, v in self.score.state_dict().items()}


def from_backbone(backbone: DecoderLM, tokenizer: Tokenizer, cfg: PRMConfig, seed: int = 0) -> ProcessRewardModel:
    """A PRM on `backbone` (e.g. the policy) with a freshly initialised head; adds the separator
    token to `tokenizer` (and a row to the embedding) when needed. With cfg.confidence, a frozen copy
    of `backbone` as it is now (before the separator) is what the head's features are read from."""
    reference = copy.deepcopy(backbone) if cfg.confidence else None
    separator_id = add_separator(backbone, tokenizer, cfg.separator)
    torch.manual_seed(seed)
    return ProcessRewardModel(backbone, cfg, separator_id, reference)


def add_separator(backbone: DecoderLM, tokenizer: Tokenizer, token: str) -> int:
    """The separator's id; a special token added to the tokenizer and the embedding if missing."""
    if tokenizer.tok.token_to_id(token) is None:
        tokenizer.tok.add_special_tokens([token])
    token_id = tokenizer.tok.token_to_id(token)
    if token_id >= backbone.config.vocab_size:
        resize_vocab(backbone, token_id + 1)
    return token_id


def resize_vocab(model: DecoderLM, size: int) -> None:
    """Grow the embedding (and an untied LM head) to `size` rows; new rows are the mean row."""
    old = model.embed_tokens.weight.detach()
    with torch.no_grad():
        embed = nn.Embedding(size, old.shape[1], device=old.device, dtype=old.dtype)
        embed.weight[:old.shape[0]] = old
        embed.weight[old.shape[0]:] = old.mean(0)
        model.embed_tokens = embed
        if model.config.tie_word_embeddings:
            model.tie_weights()
        else:
            head = model.lm_head.weight.detach()
            model.lm_head = nn.Linear(old.shape[1], size, bias=False, device=old.device, dtype=old.dtype)
            model.lm_head.weight[:head.shape[0]] = head
            model.lm_head.weight[head.shape[0]:] = head.mean(0)
    model.config.vocab_size = size


def save_prm(prm: ProcessRewardModel, path: str | Path, tokenizer: Tokenizer) -> Path:
    path = save_model(prm.backbone, path, tokenizer, extra_tensors=prm.head_state())
    if prm.reference is not None:
        save_model(prm.reference, path / CONFIDENCE_DIR)
    (path / CONFIG_FILE).write_text(json.dumps(to_dict(prm.cfg), indent=2) + "\n")
    return path


def load_prm(path: str | Path, device=None, dtype=None) -> tuple[ProcessRewardModel, Tokenizer]:
    """A PRM directory's model (in eval mode) and tokenizer; all or nothing, like `load_model`."""
    path = Path(path)
    cfg = PRMConfig.from_dir(path)
    tokenizer = Tokenizer.from_dir(path)
    separator_id = tokenizer.tok.token_to_id(cfg.separator)
    if separator_id is None:
        raise CheckpointError(f"{path}: the tokenizer has no separator token {cfg.separator!r}")
    backbone = empty_model(path, device, dtype)
    reference = load_model(path / CONFIDENCE_DIR, device, dtype) if cfg.confidence else None
    tensors = read_tensors(path)
    head = {name.removeprefix(HEAD): t for name, t in tensors if name.startswith(HEAD)}
    prm = ProcessRewardModel(backbone, cfg, separator_id, reference)
    expected = prm.score.state_dict()
    if set(head) != set(expected) or any(head[k].shape != v.shape for k, v in expected.items()):
        raise CheckpointError(f"{path}: the head tensors {sorted(HEAD + k for k in head)} do not match "
                              f"{sorted(HEAD + k for k in expected)} of hidden size {backbone.config.hidden_size}"
                              + (" with confidence features" if cfg.confidence else ""))
    load_state(backbone, [(n, t) for n, t in tensors if not n.startswith(HEAD)], path)
    prm.score.load_state_dict({k: v.to(backbone.dtype) for k, v in head.items()})
    return prm.eval(), tokenizer
