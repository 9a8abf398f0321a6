"""Saving and loading the image models: a directory with config.json and model.safetensors.

config.json holds {"kind": ..., **the model's config dataclass}; `load_model_dir` builds the
class registered for the kind and loads the weights strictly (a missing or unexpected tensor is
an error naming it). Weights may be stored in float16 to ship small (`dtype`); they load back
into the module's own dtype.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from reasonrl.config import build, to_dict

SHIPPED = Path(__file__).resolve().parent / "shipped"  # the small trained models that ship with reasonrl
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
_KINDS: dict[str, tuple[type, type]] = {}  # kind -> (module class, config dataclass)
KIND_NAMES = {"bit_tokenizer": "a bit tokenizer (train-image tokenizer)", "bit_ar": "an AR bit generator "
              "(train-image generator)", "bit_diffusion": "a diffusion bit generator (train-image generator)",
              "smarli": "a SMARLI model (train-image smarli or layout-grpo)",
              "realism": "a realism classifier (train-image realism)"}  # for errors: what a directory holds


def register_kind(kind: str, config_cls: type) -> Callable[[type], type]:
    """Class decorator: modules of this class save as `kind`; built as cls(config_cls(**config))."""
    def add(cls: type) -> type:
        _KINDS[kind] = (cls, config_cls)
        cls.kind = kind
        return cls

    return add


def save_model_dir(module: torch.nn.Module, config: Any, path: str | Path, dtype: torch.dtype | None = None,
                   extra: dict | None = None) -> Path:
    """Write `module`'s weights and config under `path`; returns `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().cpu()
             for k, v in module.state_dict().items()}
    save_file(state, str(path / WEIGHTS))
    (path / CONFIG).write_text(json.dumps({"kind": module.kind, **to_dict(config), **(extra or {})}, indent=1))
    return path


def read_config(path: str | Path) -> dict:
    file = Path(path) / CONFIG
    if not file.is_file():
        raise FileNotFoundError(f"no {CONFIG} in {path} (not an image model directory)")
    return json.loads(file.read_text())


def load_model_dir(path: str | Path, expect: str | None = None) -> torch.nn.Module:
    """The model saved in `path`, in float32 and eval mode; `expect` names the kind it must be."""
    raw = read_config(path)
    kind = raw.pop("kind", None)
    if expect is not None and kind != expect:
        raise ValueError(f"{path} holds {KIND_NAMES.get(kind, f'a model of kind {kind!r}')} (config.json kind "
                         f"{kind!r}); this needs {KIND_NAMES.get(expect, expect)} (kind {expect!r})")
    if kind not in _KINDS:
        raise ValueError(f"{path}: config.json kind {kind!r} is none of the loaded model kinds "
                         f"({', '.join(sorted(_KINDS))}); import the module that defines it first")
    cls, config_cls = _KINDS[kind]
    names = {f for f in config_cls.__dataclass_fields__}
    module = cls(build(config_cls, {k: v for k, v in raw.items() if k in names}))
    load_weights(module, path)
    return module.eval()


def load_weights(module: torch.nn.Module, path: str | Path) -> None:
    """Load model.safetensors from `path` into `module` (strict; cast to the module's dtype)."""
    file = Path(path) / WEIGHTS
    if not file.is_file():
        raise FileNotFoundError(f"no {WEIGHTS} in {path}")
    own = module.state_dict()
    state = {k: v.to(own[k].dtype) if k in own else v for k, v in load_file(str(file)).items()}
    missing, unexpected = set(own) - set(state), set(state) - set(own)
    if missing or unexpected:
        raise ValueError(f"{file}: missing tensors {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    module.load_state_dict(state)


def clear_outputs(out: str | Path, outputs: list[Path], overwrite: bool) -> None:
    """Before a command writes `outputs` (files and folders) under `out`: refuse if an earlier run left
    any of them (a smaller rerun would leave its extra files beside the new index), unless `overwrite`,
    which deletes them. Nothing else in `out` is touched."""
    found = sorted(p for p in outputs if p.exists())
    if found and not overwrite:
        names = ", ".join(p.name for p in found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
        raise ValueError(f"--out {out} holds an earlier run's output ({names}); choose another --out, or add "
                         "--overwrite to delete it first")
    for p in found:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
