"""`ModelConfig`: the decoder families reasonrl runs, read from a Hugging Face config.json.

One transformer covers Llama, Qwen2 and Qwen3; the families differ only in flags:

| family | q/k/v bias            | o bias          | q/k RMSNorm |
|--------|-----------------------|-----------------|-------------|
| Llama  | `attention_bias`      | `attention_bias`| no          |
| Qwen2  | always                | no              | no          |
| Qwen3  | `attention_bias`      | `attention_bias`| yes         |
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
ROPE_TYPES = ("default", "linear", "dynamic", "llama3")


class ConfigError(ValueError):
    """A config.json reasonrl cannot run; the message names the key."""


@dataclass(slots=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # {"rope_type": ..., "factor": ...}; None = default RoPE
    mrope_section: tuple[int, ...] | None = None  # M-RoPE (Qwen2-VL family): rotary pairs per (t, h, w) row
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    torch_dtype: str = "float32"
    raw: dict[str, Any] = field(default_factory=dict, repr=False)  # the config.json as read, kept for saving
    generation: dict[str, Any] = field(default_factory=dict, repr=False)  # generation_config.json as read, kept for saving

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """config.json's end-of-sequence ids and generation_config.json's: generation stops on any of
        them (Qwen2.5-Instruct lists <|im_end|> in one and <|endoftext|> in the other)."""
        ids = self.generation.get("eos_token_id") if isinstance(self.generation, dict) else None
        ids = ids if isinstance(ids, list) else [] if ids is None else [ids]
        return tuple(dict.fromkeys([*self.eos_token_ids, *(i for i in ids if isinstance(i, int) and not isinstance(i, bool))]))

    @property
    def family(self) -> str:
        return ARCHITECTURES[self.architecture]

    @property
    def rope_type(self) -> str:
        return (self.rope_scaling or {}).get("rope_type", "default")

    def num_params(self) -> int:
        attn = self.hidden_size * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
        mlp = 3 * self.hidden_size * self.intermediate_size
        embed = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * (attn + mlp) + embed

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        archs = d.get("architectures") or []
        arch = next((a for a in archs if a in ARCHITECTURES), None)
        if arch is None and not archs:  # no 'architectures' key: transformers goes by model_type
            arch = next((a for a, family in ARCHITECTURES.items() if family == d.get("model_type")), None)
        if arch is None:
            named = f"'architectures' {archs!r}" if archs else f"'model_type' {d.get('model_type')!r} (no 'architectures')"
            raise ConfigError(f"unsupported architecture: config.json {named}; supported: {', '.join(ARCHITECTURES)}")
        family = ARCHITECTURES[arch]
        if d.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"unsupported 'hidden_act' {d['hidden_act']!r}: only 'silu' (SwiGLU) is implemented")
        sliding = _sliding_layers(d)
        if sliding:
            raise ConfigError(f"'use_sliding_window': true makes layers {sliding[0]}-{sliding[-1]} slide (from "
                              "'max_window_layers' or 'layer_types'); sliding-window attention is not supported")
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            if not isinstance(d.get(key), int) or d[key] <= 0:
                raise ConfigError(f"config.json key {key!r} must be a positive integer, got {d.get(key)!r}")
        num_heads = d["num_attention_heads"]
        num_kv_heads = d.get("num_key_value_heads") or num_heads
        if num_heads % num_kv_heads:
            raise ConfigError(f"'num_attention_heads' ({num_heads}) is not a multiple of 'num_key_value_heads' ({num_kv_heads})")
        theta, scaling, mrope_section = _rope_params(d)
        head_dim = d.get("head_dim") or d["hidden_size"] // num_heads
        if mrope_section is not None and (len(mrope_section) != 3 or sum(mrope_section) != head_dim // 2):
            raise ConfigError(f"'mrope_section' {list(mrope_section)} must be 3 numbers summing to head_dim / 2 = {head_dim // 2}")
        attention_bias = bool(d.get("attention_bias", False))
        eos = d.get("eos_token_id")
        return cls(
            architecture=arch,
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_layers=d["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            mrope_section=mrope_section,
            max_position_embeddings=int(d.get("max_position_embeddings", 4096)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            qkv_bias=True if family == "qwen2" else attention_bias,
            o_bias=False if family == "qwen2" else attention_bias,
            mlp_bias=bool(d.get("mlp_bias", False)),
            qk_norm=family == "qwen3",
            bos_token_id=d.get("bos_token_id"),
            eos_token_ids=tuple(eos if isinstance(eos, list) else [] if eos is None else [eos]),
            torch_dtype=str(d.get("torch_dtype") or d.get("dtype") or "float32"),
            raw=dict(d),
        )

    @classmethod
    def from_dir(cls, path: str | Path) -> ModelConfig:
        file = Path(path) / "config.json"
        if not file.is_file():
            raise FileNotFoundError(f"no config.json in {path} (expected a Hugging Face checkpoint directory)")
        try:
            d = json.loads(file.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{file} is not valid JSON: {exc}") from None
        return cls.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        """The config.json to save: the original keys, updated with what this config says."""
        d = dict(self.raw)
        d.update(
            architectures=[self.architecture],
            model_type=self.family,
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            hidden_act="silu",
            rms_norm_eps=self.rms_norm_eps,
            rope_theta=self.rope_theta,
            rope_scaling=self.rope_scaling,
            max_position_embeddings=self.max_position_embeddings,
            tie_word_embeddings=self.tie_word_embeddings,
            torch_dtype=self.torch_dtype,
        )
        d.pop("rope_parameters", None)  # written in the classic form every loader reads
        if self.mrope_section:  # as Qwen2.5-VL hub checkpoints write it
            d["rope_scaling"] = {"type": "default", "rope_type": "default", "mrope_section": list(self.mrope_section)}
        d.pop("dtype", None)
        if self.family != "qwen2":
            d["attention_bias"] = self.qkv_bias
        if self.family == "llama":
            d["mlp_bias"] = self.mlp_bias
        if self.bos_token_id is not None:
            d["bos_token_id"] = self.bos_token_id
        if self.eos_token_ids:
            d["eos_token_id"] = self.eos_token_ids[0] if len(self.eos_token_ids) == 1 else list(self.eos_token_ids)
        return d


def _sliding_layers(d: dict[str, Any]) -> list[int]:
    """The layers transformers runs with sliding-window attention (Qwen2/Qwen3's rule: with
    use_sliding_window and a window, layer i slides if layer_types says so, or if i >= max_window_layers)."""
    if not d.get("use_sliding_window") or d.get("sliding_window") is None:
        return []
    n = d.get("num_hidden_layers") if isinstance(d.get("num_hidden_layers"), int) else 0
    types = d.get("layer_types")
    if not isinstance(types, list):
        first = d.get("max_window_layers", 28)
        types = ["sliding_attention" if i >= first else "full_attention" for i in range(n)]
    return [i for i, t in enumerate(types) if t == "sliding_attention"]


def _rope_params(d: dict[str, Any]) -> tuple[float, dict[str, Any] | None, tuple[int, ...] | None]:
    """(theta, scaling, mrope_section) from either the classic `rope_theta`/`rope_scaling` keys or
    transformers>=5 `rope_parameters`. M-RoPE is default RoPE whose rotary pairs read three
    position rows; checkpoints spell it type "mrope" or "default" with an `mrope_section`."""
    params = d.get("rope_parameters")
    scaling = d.get("rope_scaling")
    theta = d.get("rope_theta")
    if isinstance(params, dict):
        theta = params.get("rope_theta", theta)
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    elif isinstance(scaling, dict) and "rope_theta" in scaling:  # some transformers 4.5x configs keep it there
        inner = scaling["rope_theta"]
        if theta is not None and float(theta) != float(inner):
            raise ConfigError(f"'rope_theta' is {theta} but 'rope_scaling' holds 'rope_theta' {inner}; keep one")
        theta, scaling = inner, {k: v for k, v in scaling.items() if k != "rope_theta"}
    mrope_section = None
    if scaling:
        scaling = dict(scaling)
        mrope_section = scaling.pop("mrope_section", None)
        spelled = {k: "default" if scaling[k] == "mrope" else scaling[k] for k in ("rope_type", "type") if scaling.get(k)}
        scaling.pop("type", None)
        if len(set(spelled.values())) > 1:  # transformers 5 would read rope_type, 4.x type: refuse the ambiguity
            raise ConfigError(f"'rope_scaling' names two rope types, rope_type {spelled['rope_type']!r} and "
                              f"type {spelled['type']!r}; keep one")
        rope_type = next(iter(spelled.values()), "default")
        scaling["rope_type"] = rope_type
        if rope_type not in ROPE_TYPES:
            raise ConfigError(f"unsupported rope type {rope_type!r} in 'rope_scaling'; supported: {', '.join(ROPE_TYPES)}")
        needed = {"linear": ["factor"], "dynamic": ["factor"],
                  "llama3": ["factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"]}
        for key in needed.get(rope_type, []):
            if key not in scaling:
                raise ConfigError(f"'rope_scaling' of type {rope_type!r} needs key {key!r}")
        if rope_type == "default":
            scaling = None
    section = tuple(int(x) for x in mrope_section) if mrope_section else None
    return float(theta if theta is not None else 10000.0), scaling, section
