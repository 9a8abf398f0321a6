"""A run is one YAML file mapped onto small dataclasses, at most two levels deep.

    model:     {path: ..., device: ..., dtype: ...}
    env:       {name: "ttt:oTTT", ...}
    rollout:   {prompts_per_step: 8, samples_per_prompt: 8, over_provision: 2.0, ...}
    engine:    {max_num_seqs: 128, kv_cache_memory: ..., ...}   (EngineConfig fields)
    loss:      {name: grpo, ...}                                 (LossConfig fields)
    advantage: {std_normalize: true}                             (AdvantageConfig fields)
    optim:     {lr: 1e-6, ...}
    train:     {steps: 100, seed: 0, run_dir: runs/x, ...}

Unknown keys, wrong types and inconsistent values fail at load, naming the key
(`rollout.over_provision: must be >= 1.0, got 0.5`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reasonrl.engine.config import EngineConfig
from reasonrl.rl.advantages import AdvantageConfig
from reasonrl.rl.losses import LossConfig


class ConfigError(ValueError):
    """A run config that cannot run; the message starts with the key."""


@dataclass(slots=True)
class ModelSection:
    path: str = ""
    """Hugging Face checkpoint directory of the policy."""
    device: str | None = None
    """cpu or cuda (default: cuda when available)."""
    dtype: str | None = None
    """Master weights: float32 (default). On CUDA, compute runs in `autocast` (bf16)."""
    autocast: str | None = None
    """bfloat16 or float16 compute on CUDA; None = float32 throughout (the default on CPU)."""


@dataclass(slots=True)
class EnvSection:
    name: str = "count"
    """An environment spec: `ttt:oTTT`, `ttt:all`, `math:FILE.jsonl`, `jsonl:FILE?...`, `count`."""
    eval_size: int = 64
    """Held-out prompts for accuracy before/after training and every `train.eval_every` steps."""


@dataclass(slots=True)
class RolloutSection:
    prompts_per_step: int = 8
    """Prompt groups trained on per step (N)."""
    samples_per_prompt: int = 8
    """Responses per prompt (G): the group GRPO normalises within."""
    over_provision: float = 1.0
    """APRIL: launch ceil(N * ratio) groups, stop once N have finished, keep the rest's partial
    responses for the next step. 1.0 = plain synchronous rollout."""
    max_tokens: int = 256
    """Response tokens per sample, resumed tokens included."""
    temperature: float = 1.0
    top_p: float = 1.0
    dynamic_sampling: bool = False
    """DAPO: drop groups whose rewards are all equal and launch more until N groups remain."""
    max_groups_per_step: int = 0
    """With dynamic sampling, give up filling the step after launching this many groups (0: 8 N)."""
    overlong_max: int = 0
    """DAPO overlong shaping: penalise responses longer than overlong_max - overlong_cache (0: off)."""
    overlong_cache: int = 0


@dataclass(slots=True)
class OptimSection:
    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    warmup_steps: int = 0
    schedule: str = "constant"
    """constant or cosine (after warmup)."""
    max_tokens_per_microbatch: int = 8192
    """Padded tokens per forward/backward; larger batches accumulate gradients."""


@dataclass(slots=True)
class TrainSection:
    steps: int = 100
    seed: int = 0
    run_dir: str = "runs/default"
    save_every: int = 10
    keep_checkpoints: int = 2
    eval_every: int = 0
    """Held-out accuracy every k steps (0: only before and after)."""
    reference_model: bool = False
    """Keep a frozen copy of the initial policy for the KL term (needs loss.beta > 0)."""
    remote_url: str | None = None
    """Roll out against a `reasonrl serve` endpoint instead of the in-process engine."""


@dataclass(slots=True)
class RunConfig:
    model: ModelSection = field(default_factory=ModelSection)
    env: EnvSection = field(default_factory=EnvSection)
    rollout: RolloutSection = field(default_factory=RolloutSection)
    engine: EngineConfig = field(default_factory=EngineConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _as_dict(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _as_dict(section) -> dict[str, Any]:
    return {f.name: (list(v) if isinstance(v := getattr(section, f.name), tuple) else v) for f in dataclasses.fields(section)}


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML run config (None: all defaults) and apply `{"section.key": value}` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if not key:
            raise ConfigError(f"override {dotted!r} must look like section.key=value")
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            raise ConfigError(f"{section}: must be a mapping")
        data[section][key] = value
    return from_dict(data)


def from_dict(data: dict[str, Any]) -> RunConfig:
    sections = {f.name: f for f in dataclasses.fields(RunConfig)}
    kwargs = {}
    for name, value in data.items():
        if name not in sections:
            raise ConfigError(f"{name}: unknown section; known: {', '.join(sections)}")
        if isinstance(value, str) and name == "model":
            value = {"path": value}  # `model: DIR` is short for `model: {path: DIR}`
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: must be a mapping of keys, got {type(value).__name__}")
        kwargs[name] = _section(name, sections[name].default_factory, value)
    cfg = RunConfig(**kwargs)
    _check(cfg)
    return cfg


def _section(name: str, cls, values: dict[str, Any]):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"{name}.{key}: unknown key; known: {', '.join(fields)}")
        kwargs[key] = _coerce(f"{name}.{key}", hints[key], value)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _coerce(key: str, hint, value):
    """Check `value` against the annotation; ints are accepted for floats and lists for tuples."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(key, arg, value)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_name(hint)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} numbers, got {value!r}")
        return tuple(_coerce(key, a, v) for a, v in zip(args, value))
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML reads 1e-6 as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint in (int, str, bool) and isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    if hint is dict and isinstance(value, dict):  # free-form parameters, checked by their owner (kv_options)
        return dict(value)
    raise ConfigError(f"{key}: expected {_name(hint)}, got {value!r}")


def _name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _check(cfg: RunConfig) -> None:
    r, o, t = cfg.rollout, cfg.optim, cfg.train

    def need(ok: bool, key: str, message: str):
        if not ok:
            raise ConfigError(f"{key}: {message}")

    need(bool(cfg.model.path) or cfg.train.remote_url is not None, "model.path", "is required")
    need(r.prompts_per_step >= 1, "rollout.prompts_per_step", f"must be >= 1, got {r.prompts_per_step}")
    need(r.samples_per_prompt >= 1, "rollout.samples_per_prompt", f"must be >= 1, got {r.samples_per_prompt}")
    need(r.over_provision >= 1.0, "rollout.over_provision", f"must be >= 1.0 (1.0 = synchronous), got {r.over_provision}")
    need(r.max_tokens >= 1, "rollout.max_tokens", f"must be >= 1, got {r.max_tokens}")
    need(r.temperature > 0, "rollout.temperature", f"must be > 0 for RL (log-probs of sampled tokens), got {r.temperature}")
    need(0 < r.top_p <= 1, "rollout.top_p", f"must be in (0, 1], got {r.top_p}")
    need(r.overlong_max == 0 or 0 < r.overlong_cache <= r.overlong_max, "rollout.overlong_cache",
         "must be in (0, overlong_max] when overlong_max is set")
    need(o.lr > 0, "optim.lr", f"must be > 0, got {o.lr}")
    need(o.schedule in ("constant", "cosine"), "optim.schedule", f"must be constant or cosine, got {o.schedule!r}")
    need(o.max_tokens_per_microbatch >= 1, "optim.max_tokens_per_microbatch", "must be >= 1")
    need(o.grad_clip > 0, "optim.grad_clip", f"must be > 0, got {o.grad_clip}")
    need(t.steps >= 1, "train.steps", f"must be >= 1, got {t.steps}")
    need(t.save_every >= 1, "train.save_every", f"must be >= 1, got {t.save_every}")
    need(not (cfg.loss.beta > 0 and not t.reference_model), "loss.beta",
         "a KL term needs train.reference_model: true")
    need(cfg.model.autocast in (None, "bfloat16", "float16"), "model.autocast", "must be bfloat16, float16 or null")
