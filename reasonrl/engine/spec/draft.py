"""`DraftHead`: the EAGLE draft (arXiv 2401.15077, 2406.16858) with SpecVLM's input norm (2509.11815).

The draft predicts the target's next final hidden state ("feature") from the current feature and
the embedding of the token that feature sampled:

    g_{j+1} = Layer(FC([norm(embed(x_{j+1})), norm(f_j)]))      logits_{j+2} = lm_head(g_{j+1})

One decoder layer shaped like the target's; the token embedding and the LM head are the target's
own (shared, never copied or saved). f_j is the target's last hidden state after its final norm,
the input of its LM head. Row j of the draft sits at position j + 1, the position of token x_{j+1},
so draft and target use the same rotary positions.

Departures: EAGLE concatenates unnormalised inputs; SpecVLM's "input LayerNorm" is an RMSNorm on
each half here (the target's own norm type). For a vision-language target (EagleVLM) the draft
runs on visual tokens too: their embedding is the target's merged image token (`embed`), and an
optional elastic visual compressor (vision/spec/compressor.py) shrinks the draft's visual rows
(engine/spec/visual.py); its weights are saved with the draft's.

A draft checkpoint is a directory with `draft_config.json` (the layer's shape and the identity of
the target it was distilled against) and `draft.safetensors` (its own weights only).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
from torch import nn

from reasonrl.models.loader import CheckpointError
from reasonrl.models.model import Attention, DecoderLayer, DecoderLM, RMSNorm
from reasonrl.vision.spec.compressor import CompressorConfig, VisualCompressor

CONFIG_FILE, WEIGHTS_FILE = "draft_config.json", "draft.safetensors"


@dataclass
class DraftInfo:
    """What ties a draft to its target, and how it was trained."""

    target_architecture: str
    vocab_size: int
    hidden_size: int
    target_fingerprint: str  # hash of the target's embedding and LM head
    target_path: str = ""
    steps: int = 0
    accepted_length: float | None = None  # on the held-out set at the last evaluation
    compressor: dict | None = None  # the visual compressor's CompressorConfig, when the draft has one
    attention: list[int] | None = None  # the target's [heads, KV heads, head size] (None: a draft saved before it was kept)


def fingerprint(target: DecoderLM, rows: int = 1024) -> str:
    """A hash of the target's embedding and LM head, from at most `rows` evenly spaced rows of
    each (a 150k-token vocabulary is not copied to the host to tell two checkpoints apart), rounded
    to bfloat16 first so that the same checkpoint loaded in float32 or bfloat16 hashes alike."""
    h = hashlib.sha256()
    for w in (target.embed_tokens.weight, target.lm_head.weight):
        sample = w.detach()[:: max(1, w.shape[0] // rows)]
        h.update(sample.to(torch.bfloat16).float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class DraftHead(nn.Module):
    def __init__(self, target: DecoderLM, compressor: CompressorConfig | None = None):
        """`compressor`: give the draft of a vision-language target SpecVLM's elastic visual
        compressor (vision/spec/compressor.py) for its visual rows (engine/spec/visual.py)."""
        super().__init__()
        cfg = target.config
        self.config = replace(cfg, num_layers=1)
        h = cfg.hidden_size
        self.embed_norm = RMSNorm(h, cfg.rms_norm_eps)
        self.feature_norm = RMSNorm(h, cfg.rms_norm_eps)
        self.fc = nn.Linear(2 * h, h, bias=True)
        self.layer = DecoderLayer(self.config, 0)
        if compressor is not None and getattr(target, "vlm_config", None) is None:
            raise ValueError("a visual compressor needs a vision-language target (this one takes no images)")
        self.compressor = VisualCompressor(h, cfg.num_heads, compressor) if compressor is not None else None
        self._target = [target]  # a list keeps the target out of this module's parameters and state dict
        self.to(device=target.device, dtype=target.dtype)

    @property
    def target(self) -> DecoderLM:
        return self._target[0]

    def forward(self, token_ids: torch.Tensor, features: torch.Tensor, positions: torch.Tensor,
                attn: Attention, image_embeds: torch.Tensor | None = None,
                image_rows: torch.Tensor | None = None) -> torch.Tensor:
        """token_ids (N,), features (N, h) of the previous position, positions (N,) (or M-RoPE rows
        (3, N)) -> predicted features (N, h). Rows `image_rows` of a vision-language target take
        `image_embeds` as their token embedding, as the target's own rows do."""
        return self.decode(self.fuse(self.embed(token_ids, image_embeds, image_rows), features), positions, attn)

    def embed(self, token_ids: torch.Tensor, image_embeds: torch.Tensor | None = None,
              image_rows: torch.Tensor | None = None) -> torch.Tensor:
        if image_embeds is None:
            return self.target.embed_tokens(token_ids)
        return self.target.embed(token_ids, image_embeds, image_rows)  # a Qwen2_5_VL target

    def fuse(self, token_embeds: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """(N, h) token embeddings and (N, h) features -> the decoder layer's input rows (N, h)."""
        return self.fc(torch.cat([self.embed_norm(token_embeds), self.feature_norm(features)], -1))

    def decode(self, x: torch.Tensor, positions: torch.Tensor, attn: Attention) -> torch.Tensor:
        cos, sin = self.target.rotary(positions, x.dtype)  # the target's rotary tables, shared
        return self.layer(x, cos, sin, attn)

    def decode_newest(self, x: torch.Tensor, positions: torch.Tensor, newest: torch.Tensor,
                      attend) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A catch-up's layer: the outputs of rows `newest` (B,) only, and every row's key and value
        (N, Hkv, D). The draft has one layer, so a row's key and value depend on that row alone;
        the rows behind each sequence's newest need neither attention nor the MLP (a prompt's
        catch-up costs its projections, not a prefill). `attend(q, k, v)`: the newest rows'
        queries (B, Hq, D) over every row's keys and values -> (B, Hq, D)."""
        layer = self.layer
        cos, sin = self.target.rotary(positions, x.dtype)
        q, k, v = layer.self_attn.project(layer.input_layernorm(x), cos, sin)
        y = x[newest] + layer.self_attn.o_proj(attend(q[newest], k, v).flatten(1))
        return y + layer.mlp(layer.post_attention_layernorm(y)), k, v

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.target.compute_logits(features)

    def flops_per_row(self) -> float:
        """Matmul FLOPs of one draft row (fc and the layer's projections; attention's share, which
        grows with the context, left out)."""
        mats = [self.fc.weight, *(p for n, p in self.layer.named_parameters() if n.endswith("proj.weight"))]
        return 2.0 * sum(w.numel() for w in mats)

    # ---- checkpoints ---------------------------------------------------------------------------
    def save(self, path: str | Path, info: DraftInfo) -> Path:
        """Write the draft over the one `path` may hold. Each file is written under a temporary name
        and renamed over the old one, the config last: a kill mid-save leaves the last whole draft
        (at worst, killed between the two renames, the new weights under the last save's config:
        the same target and shape, its `steps` one save behind)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        weights, config = path / (WEIGHTS_FILE + ".tmp"), path / (CONFIG_FILE + ".tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(weights))
        config.write_text(json.dumps({"format": "reasonrl-draft", **asdict(info)}, indent=2) + "\n")
        os.replace(weights, path / WEIGHTS_FILE)
        os.replace(config, path / CONFIG_FILE)
        return path

    @classmethod
    def load(cls, path: str | Path, target: DecoderLM) -> DraftHead:
        """Load a draft for `target`; a draft whose shape does not fit the target is an error, one
        distilled against other weights of the same shape only a warning (output stays exact,
        fewer tokens are accepted)."""
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"{path} is not a draft checkpoint: it needs {CONFIG_FILE} and {WEIGHTS_FILE} "
                                    "(make one with `reasonrl distill-draft`)")
        info = read_info(path)
        cfg = target.config
        if (info.vocab_size, info.hidden_size) != (cfg.vocab_size, cfg.hidden_size):
            raise ValueError(f"draft {path} was made for a target with vocab {info.vocab_size} and hidden size "
                             f"{info.hidden_size}; this target has {cfg.vocab_size} and {cfg.hidden_size}")
        if info.target_architecture != cfg.architecture:
            raise ValueError(f"draft {path} was made for a {info.target_architecture} target; this one is a "
                             f"{cfg.architecture} (its layer differs: distill a draft for it)")
        layout = attention_layout(cfg)
        if info.attention is not None and list(info.attention) != layout:
            raise ValueError(f"draft {path} was made for a target with [heads, KV heads, head size] {list(info.attention)}; "
                             f"this target has {layout} (its layer splits heads differently: distill a draft for it)")
        if info.target_fingerprint != fingerprint(target):
            warnings.warn(f"draft {path} was distilled against other weights ({info.target_path or 'unknown'}): "
                          "decoding stays exact but fewer draft tokens will be accepted", stacklevel=2)
        draft = cls(target, CompressorConfig(**info.compressor) if info.compressor else None)
        try:
            weights = load_file(str(path / WEIGHTS_FILE))
        except Exception as exc:  # safetensors' own error (a truncated or foreign file) is no OSError or ValueError
            raise CheckpointError(f"cannot read {path / WEIGHTS_FILE}: {type(exc).__name__}: {exc}") from None
        expected = {k: tuple(v.shape) for k, v in draft.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in weights.items()}
        if found != expected:
            wrong = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
            raise ValueError(f"draft {path} does not fit this target's layer shape (heads, MLP width): "
                             + ", ".join(f"{k} {found.get(k, 'missing')} (needs {expected.get(k, 'none')})" for k in wrong[:4]))
        draft.load_state_dict({k: v.to(target.device, target.dtype) for k, v in weights.items()})
        return draft


def attention_layout(cfg) -> list[int]:
    """[heads, KV heads, head size] of a model config: weight shapes alone do not tell them apart
    (8 heads of 16 and 4 of 32 have the same projections)."""
    return [cfg.num_heads, cfg.num_kv_heads, cfg.head_dim]


def read_info(path: str | Path) -> DraftInfo:
    file = Path(path) / CONFIG_FILE
    try:
        raw = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {file}: {type(exc).__name__}: {exc}") from None
    if not isinstance(raw, dict) or raw.pop("format", None) != "reasonrl-draft":
        raise CheckpointError(f"{file} is not a reasonrl draft config")
    unknown = set(raw) - {f.name for f in fields(DraftInfo)}
    if unknown:
        raise CheckpointError(f"{file} has keys a draft config does not: {', '.join(sorted(unknown))}")
    return DraftInfo(**raw)

