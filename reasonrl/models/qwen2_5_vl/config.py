"""`VLMConfig`: a Qwen2.5-VL config.json, read into the text decoder's `ModelConfig` plus a
`VisionConfig` and the vision token ids.

Hub checkpoints keep the text keys at the top level (recent revisions repeat them under
`text_config`); transformers 5.x writes them only under `text_config`. Both read the same here;
`to_dict` writes the hub layout (top level and `text_config`), which both transformers and vLLM load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reasonrl.models.config import ConfigError, ModelConfig

ARCHITECTURE = "Qwen2_5_VLForConditionalGeneration"
# top-level keys that are not the text decoder's
_NOT_TEXT = {"architectures", "model_type", "text_config", "vision_config", "transformers_version",
             "image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id", "vision_token_id"}


@dataclass(slots=True)
class VisionConfig:
    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    out_hidden_size: int  # the merger's output: the text model's hidden size
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2  # merge x merge patches become one LM token
    window_size: int = 112  # window attention side, in pixels
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)  # the blocks with full attention
    in_channels: int = 3
    rope_theta: float = 10000.0
    tokens_per_second: int = 2  # video only; kept for saving
    rms_norm_eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Values per flattened patch: C * temporal * patch * patch."""
        return self.in_channels * self.temporal_patch_size * self.patch_size ** 2

    @property
    def window_tokens(self) -> int:
        """Window side in merged tokens."""
        return self.window_size // (self.patch_size * self.spatial_merge_size)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VisionConfig:
        if d.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"unsupported vision_config 'hidden_act' {d['hidden_act']!r}: only 'silu' (Qwen2.5-VL)")
        for key in ("depth", "hidden_size", "intermediate_size", "num_heads", "out_hidden_size"):
            if not isinstance(d.get(key), int) or d[key] <= 0:
                raise ConfigError(f"vision_config key {key!r} must be a positive integer, got {d.get(key)!r}")
        rope = d.get("rope_parameters") or {}
        cfg = cls(d["depth"], d["hidden_size"], d["intermediate_size"], d["num_heads"], d["out_hidden_size"],
                  patch_size=int(d.get("patch_size", 14)), temporal_patch_size=int(d.get("temporal_patch_size", 2)),
                  spatial_merge_size=int(d.get("spatial_merge_size", 2)), window_size=int(d.get("window_size", 112)),
                  fullatt_block_indexes=tuple(d.get("fullatt_block_indexes", (7, 15, 23, 31))),
                  in_channels=int(d.get("in_channels", d.get("in_chans", 3))),
                  rope_theta=float(rope.get("rope_theta", 10000.0)), tokens_per_second=int(d.get("tokens_per_second", 2)))
        cfg._validate()
        return cfg

    def _validate(self) -> None:
        if self.hidden_size % self.num_heads or self.head_dim % 4:
            raise ConfigError(f"vision_config 'hidden_size' {self.hidden_size} / 'num_heads' {self.num_heads} must give a "
                              "head size divisible by 4 (2D rotary embedding)")
        if self.window_tokens < 1 or self.window_size % (self.patch_size * self.spatial_merge_size):
            raise ConfigError(f"vision_config 'window_size' {self.window_size} must be a multiple of "
                              f"patch_size * spatial_merge_size = {self.patch_size * self.spatial_merge_size}")
        bad = [i for i in self.fullatt_block_indexes if not 0 <= i < self.depth]
        if bad:
            raise ConfigError(f"vision_config 'fullatt_block_indexes' {bad} outside 0..{self.depth - 1}")

    def to_dict(self) -> dict[str, Any]:
        return {"depth": self.depth, "hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size,
                "num_heads": self.num_heads, "out_hidden_size": self.out_hidden_size, "hidden_act": "silu",
                "patch_size": self.patch_size, "spatial_patch_size": self.patch_size,
                "temporal_patch_size": self.temporal_patch_size, "spatial_merge_size": self.spatial_merge_size,
                "window_size": self.window_size, "fullatt_block_indexes": list(self.fullatt_block_indexes),
                "in_channels": self.in_channels, "in_chans": self.in_channels, "tokens_per_second": self.tokens_per_second,
                "model_type": "qwen2_5_vl",
                **({"rope_parameters": {"rope_type": "axial", "rope_theta": self.rope_theta}} if self.rope_theta != 10000.0 else {})}


@dataclass(slots=True)
class VLMConfig:
    text: ModelConfig  # the Qwen2 decoder, with its M-RoPE `mrope_section`
    vision: VisionConfig
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    raw: dict[str, Any] = field(default_factory=dict, repr=False)  # the config.json as read, kept for saving

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VLMConfig:
        if ARCHITECTURE not in (d.get("architectures") or []):
            raise ConfigError(f"config.json 'architectures' {d.get('architectures')!r} is not {ARCHITECTURE}")
        if not isinstance(d.get("vision_config"), dict):
            raise ConfigError("config.json has no 'vision_config' object (needed for Qwen2.5-VL)")
        text = ModelConfig.from_dict(_text_dict(d))
        if text.mrope_section is None:
            raise ConfigError("Qwen2.5-VL config.json needs 'rope_scaling' (or 'rope_parameters') with an 'mrope_section'")
        ids = {k: int(d[k]) for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
               if d.get(k) is not None}
        return cls(text, VisionConfig.from_dict(d["vision_config"]), **ids, raw=dict(d))

    @classmethod
    def from_dir(cls, path: str | Path) -> VLMConfig:
        file = Path(path) / "config.json"
        if not file.is_file():
            raise FileNotFoundError(f"no config.json in {path} (expected a Hugging Face checkpoint directory)")
        return cls.from_dict(json.loads(file.read_text()))

    def to_dict(self) -> dict[str, Any]:
        """The hub layout: text keys at the top level and again under `text_config`."""
        text = {k: v for k, v in self.text.to_dict().items() if k not in ("architectures", "model_type")}
        d = {k: v for k, v in self.raw.items() if k not in ("rope_parameters", "dtype")}
        d.update(text)
        d.update(architectures=[ARCHITECTURE], model_type="qwen2_5_vl", text_config={**text, "model_type": "qwen2_5_vl_text"},
                 vision_config=self.vision.to_dict(), image_token_id=self.image_token_id,
                 video_token_id=self.video_token_id, vision_start_token_id=self.vision_start_token_id,
                 vision_end_token_id=self.vision_end_token_id)
        return d


def _text_dict(d: dict[str, Any]) -> dict[str, Any]:
    """The decoder's keys: top level, overridden by `text_config`; the dtype is the top level's
    (hub revisions carry a stale float32 in `text_config`)."""
    text = {k: v for k, v in d.items() if k not in _NOT_TEXT}
    text.update({k: v for k, v in (d.get("text_config") or {}).items() if k not in _NOT_TEXT})
    text["torch_dtype"] = d.get("torch_dtype") or d.get("dtype") or text.get("torch_dtype") or text.get("dtype")
    text["tie_word_embeddings"] = bool(d.get("tie_word_embeddings") or (d.get("text_config") or {}).get("tie_word_embeddings"))
    text["architectures"] = ["Qwen2ForCausalLM"]  # the language model is a Qwen2 decoder
    return text
