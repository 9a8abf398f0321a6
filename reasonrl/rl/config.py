"""A run is one YAML file mapped onto small dataclasses, at most two levels deep.

    model:     {path: ..., device: ..., dtype: ...}
    env:       {name: "ttt:oTTT", ...}
    rollout:   {prompts_per_step: 8, samples_per_prompt: 8, over_provision: 2.0, ...}  (RolloutConfig)
    engine:    {max_num_seqs: 128, kv_cache_memory: 1GiB, ...}                        (EngineConfig)
    loss:      {name: grpo, ...}                                                     (LossConfig)
    advantage: {std_normalize: true}                                                 (AdvantageConfig)
    optim:     {lr: 1e-6, ppo_epochs: 1, ...}
    train:     {steps: 100, seed: 0, run_dir: runs/x, ...}
    cluster:   {ray: false, engines: 2, trainers: 1, ...}                             (ClusterConfig)

Unknown keys, wrong types and inconsistent values fail at load, naming the key
(`rollout.over_provision: must be >= 1.0, got 0.5`). `reasonrl train --help` lists every key with
its default and documentation, read from these dataclasses.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from reasonrl.config import ConfigError, build, check, to_dict
from reasonrl.engine.config import EngineConfig
from reasonrl.reward.prm.process import ProcessRewardConfig
from reasonrl.rl.advantages import AdvantageConfig
from reasonrl.rl.losses import LossConfig
from reasonrl.rollout.config import RolloutConfig
from reasonrl.scale.config import ClusterConfig

__all__ = ["ConfigError", "RunConfig", "load_config", "from_dict"]


@dataclass(slots=True)
class ModelSection:
    path: str = field(default="", metadata={"flag": "model"})
    """Hugging Face checkpoint directory (of the policy, for training)."""
    device: str | None = None
    """cpu, cuda or cuda:N (default: cuda when available)."""
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    """The trained weights' dtype (default float32 on every device: master weights, with `autocast` for
    low-precision compute; bfloat16 weights lose AdamW's small updates, and are warned about)."""
    autocast: Literal["bfloat16", "float16"] | None = None
    """Compute dtype on CUDA under torch.autocast; None: the weights' dtype throughout (CPU)."""
    freeze_vision: bool = False
    """Vision-language policies: keep the vision tower and merger frozen (as LVR and ImageDoctor do)."""
    init: Literal["qwen2", "llama", "qwen3"] | None = None
    """Smoke tests: when `path` holds no checkpoint yet, first make a tiny random one of this family
    there (hidden size 64, 2 layers, a byte-level tokenizer trained on the environment's prompts)."""


@dataclass(slots=True)
class EnvSection:
    name: str = "sums:"
    """An environment spec: `sums:` (the demo's task), `ttt:oTTT`, `ttt:all`, `math:FILE.jsonl`, `jsonl:FILE?...`,
    `letter`; its scheme (before the first ":") must be registered (reasonrl/envs/registry.py)."""
    eval_size: int = 64
    """Held-out prompts for accuracy before/after training and every `train.eval_every` steps (at
    most the distinct prompts the evaluation environment has)."""
    eval_name: str | None = None
    """An environment spec to evaluate on instead (e.g. `math:test.jsonl` next to `math:train.jsonl`);
    None: `name`'s eval split. An environment built from one file has no other split: its eval
    prompts are training prompts, and the run warns so."""

    def __post_init__(self):
        check(self.eval_size >= 1, "env.eval_size", f"must be >= 1, got {self.eval_size}")


@dataclass(slots=True)
class OptimSection:
    lr: float = 1e-5
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    grad_clip: float = 1.0
    """Clip the gradient's global norm to this before each optimizer step."""
    warmup_steps: int = 0
    """Linear warm-up over this many training steps."""
    schedule: Literal["constant", "cosine"] = "constant"
    """Learning-rate schedule after warm-up, per training step."""
    ppo_epochs: int = 1
    """Passes over each rollout batch. With more than one pass (or mini-batch) the old log-probs are
    recomputed before the update, so clipping and the KL to the rollout policy take effect."""
    minibatches_per_epoch: int = 1
    """Optimizer steps per pass: the rollout batch is shuffled and split into this many mini-batches."""
    max_tokens_per_microbatch: int = 8192
    """Padded tokens per forward/backward; larger mini-batches accumulate gradients (same result)."""

    def __post_init__(self):
        check(0 < self.lr < math.inf, "optim.lr", f"must be a finite number > 0, got {self.lr}")
        check(0 <= self.weight_decay < math.inf, "optim.weight_decay", f"must be a finite number >= 0, got {self.weight_decay}")
        check(all(0 <= b < 1 for b in self.betas), "optim.betas", f"must be in [0, 1), got {list(self.betas)}")
        check(self.grad_clip > 0, "optim.grad_clip", f"must be > 0, got {self.grad_clip}")  # (inf: no clipping)
        check(self.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        check(self.ppo_epochs >= 1, "optim.ppo_epochs", f"must be >= 1, got {self.ppo_epochs}")
        check(self.minibatches_per_epoch >= 1, "optim.minibatches_per_epoch", f"must be >= 1, got {self.minibatches_per_epoch}")
        check(self.max_tokens_per_microbatch >= 1, "optim.max_tokens_per_microbatch", "must be >= 1")

    @property
    def updates_per_step(self) -> int:
        return self.ppo_epochs * self.minibatches_per_epoch


@dataclass(slots=True)
class TrainSection:
    steps: int = 100
    """Training steps (rollout + update each)."""
    seed: int = 0
    """Seeds the prompt order, the samples' seeds and torch."""
    run_dir: str = "runs/default"
    """Where checkpoints, metrics.jsonl, config.yaml and the report go; rerunning resumes from it."""
    save_every: int = 10
    """Checkpoint every k steps (and at the last step, and when stopped by Ctrl-C or SIGTERM)."""
    keep_checkpoints: int = 2
    """Checkpoints kept in run_dir/checkpoints (older ones are deleted)."""
    eval_every: int = 0
    """Held-out accuracy every k steps (0: only before and after)."""
    reference_model: bool = False
    """Keep a frozen copy of the initial policy for the KL term (needs loss.beta > 0)."""
    trackers: list[Literal["tensorboard", "wandb"]] = field(default_factory=list)
    """Experiment trackers besides metrics.jsonl (always written): tensorboard, wandb. Each needs its
    package (pip install 'reasonrl[tensorboard]' / 'reasonrl[wandb]'); a missing one is an error at start."""

    def __post_init__(self):
        check(self.steps >= 1, "train.steps", f"must be >= 1, got {self.steps}")
        check(self.save_every >= 1, "train.save_every", f"must be >= 1, got {self.save_every}")
        check(self.keep_checkpoints >= 1, "train.keep_checkpoints", f"must be >= 1, got {self.keep_checkpoints}")
        check(self.eval_every >= 0, "train.eval_every", f"must be >= 0, got {self.eval_every}")
        check(len(set(self.trackers)) == len(self.trackers), "train.trackers", f"lists a tracker twice: {self.trackers}")


@dataclass(slots=True)
class RunConfig:
    model: ModelSection = field(default_factory=ModelSection)
    env: EnvSection = field(default_factory=EnvSection)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    process: ProcessRewardConfig = field(default_factory=ProcessRewardConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def sections() -> dict[str, type]:
    """Section name -> its dataclass, in recipe order."""
    return {f.name: f.default_factory for f in dataclasses.fields(RunConfig)}


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping: plain YAML keeps the last, so a
    second `optim:` section further down a recipe silently dropped the first one's settings."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A recipe's sections; one with every key commented out (`train:`, which YAML reads as null) is empty."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = yaml.load(path.read_text(), Loader=UniqueKeyLoader) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return {name: {} if value is None else value for name, value in data.items()}


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML run config (None: all defaults) and apply `{"section.key": value}` overrides."""
    data: dict[str, Any] = read_yaml(path) if path is not None else {}
    if isinstance(data.get("model"), str):
        data["model"] = {"path": data["model"]}  # `model: DIR` is short for `model: {path: DIR}`
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if not key:
            raise ConfigError(f"override {dotted!r} must look like section.key=value")
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            raise ConfigError(f"{section}: must be a mapping")
        data[section][key] = value
    cfg = from_dict(data)
    _check_environment(cfg.env.name)
    return cfg


def _check_environment(spec: str) -> None:
    """A recipe's environment must be registered (checked here, not in `from_dict`: code that hands the
    trainer an environment object of its own, as the ImageDoctor bench does, may name it freely)."""
    from reasonrl.envs.registry import ENVIRONMENTS

    scheme = spec.partition(":")[0]
    if scheme not in ENVIRONMENTS:
        raise ConfigError(f"env.name: unknown environment {scheme!r} in {spec!r}; "
                          f"known: {', '.join(sorted(ENVIRONMENTS))}")


def from_dict(data: dict[str, Any]) -> RunConfig:
    known = sections()
    kwargs = {}
    for name, value in data.items():
        if name not in known:
            raise ConfigError(f"{name}: unknown section; known: {', '.join(known)}")
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: must be a mapping of keys, got {type(value).__name__}")
        kwargs[name] = build(known[name], value, name)
    cfg = RunConfig(**kwargs)
    _check(cfg)
    return cfg


def _check(cfg: RunConfig) -> None:
    """Rules that span sections."""
    if not cfg.model.path:
        raise ConfigError("model.path: is required (the policy's checkpoint directory, also with rollout.remote_url)")
    if cfg.cluster.ray and importlib.util.find_spec("ray") is None:
        raise ConfigError("cluster.ray: needs Ray, an optional dependency: pip install 'reasonrl[ray]'")
    if cfg.cluster.ray and cfg.rollout.remote_url:  # on Ray the engine actors roll out: the servers would get nothing
        raise ConfigError("rollout.remote_url: rollouts run either on remote servers or on Ray's engine actors "
                          "(cluster.ray), not both; drop one")
    if cfg.loss.beta > 0 and not cfg.train.reference_model:
        raise ConfigError("loss.beta: a KL term needs train.reference_model: true")
    if cfg.advantage.name == "grpo" and cfg.rollout.samples_per_prompt < 2:
        raise ConfigError("rollout.samples_per_prompt: GRPO's advantages are relative to each prompt's group, so a "
                          "group of 1 has advantage 0 and nothing trains; use 2 or more")
