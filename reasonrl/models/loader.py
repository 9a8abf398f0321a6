"""Load and save Hugging Face checkpoint directories, offline.

A directory holds config.json and either model.safetensors, a sharded
model.safetensors.index.json, or (older checkpoints) pytorch_model.bin or its sharded
pytorch_model.bin.index.json. Hugging Face tensor
names map onto `DecoderLM` parameters through `hf_to_local`; the separate q/k/v and gate/up
projections land in slices of the fused parameters.

Qwen2.5-VL checkpoints (`Qwen2_5_VL`, a `DecoderLM` with a vision tower) load through the same
path. Hub checkpoints name tensors `visual.*`, `model.*` and `lm_head.*`; transformers 5.x's own
module layout is `model.visual.*`, `model.language_model.*`, `lm_head.*`. Both load; saving
writes the hub layout, which transformers 5.x reads too.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from reasonrl.models.config import ModelConfig
from reasonrl.models.model import DecoderLM
from reasonrl.models.qwen2_5_vl.config import ARCHITECTURE as VLM_ARCHITECTURE
from reasonrl.models.qwen2_5_vl.config import VLMConfig
from reasonrl.models.qwen2_5_vl.model import Qwen2_5_VL
from reasonrl.models.qwen2_5_vl.processor import ImageConfig
from reasonrl.models.rope import inv_frequencies

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ENTRY_FILES = ("model.safetensors", "model.safetensors.index.json")  # the file a loader opens first
_FUSED = re.compile(r"^(layers\.\d+)\.(self_attn|mlp)\.(q|k|v|gate|up)_proj\.(weight|bias)$")


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model; the message names the tensor."""


def hf_to_local(name: str, cfg: ModelConfig) -> tuple[str, int, int] | None:
    """HF tensor name -> (parameter name, row offset, rows); rows = -1 for the whole parameter.
    None for tensors the model does not use (e.g. precomputed rotary tables)."""
    if name.endswith("rotary_emb.inv_freq"):
        return None
    name = name.replace("model.language_model.", "model.", 1).removeprefix("model.")
    if name.startswith("visual."):  # Qwen2.5-VL's vision tower, named as in the checkpoint
        return name, 0, -1
    m = _FUSED.match(name)
    if not m:
        return name, 0, -1
    prefix, block, proj, kind = m.groups()
    q, kv, inter = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size
    offsets = {"q": (0, q), "k": (q, kv), "v": (q + kv, kv), "gate": (0, inter), "up": (inter, inter)}
    fused = "qkv_proj" if block == "self_attn" else "gate_up_proj"
    return f"{prefix}.{block}.{fused}.{kind}", *offsets[proj]


MASTER_DTYPE = "float32"
"""What trainers load the weights they update in unless told otherwise, on every device: an AdamW
step of lr 1e-6 is far below half a bfloat16 unit of a typical weight, so bfloat16 weights would
mostly not move (compute in bfloat16 through autocast instead)."""


def master_dtype(dtype: str | None, option: str, autocast_option: str) -> str:
    """The dtype a trainer loads the weights it updates in: `dtype` as asked (a half-precision one is
    warned about, naming the run's `option` and `autocast_option`), else MASTER_DTYPE."""
    if dtype not in (None, MASTER_DTYPE):
        warnings.warn(f"{option} {dtype}: the optimizer updates {dtype} weights and loses every update below half "
                      f"a unit in their last place; keep float32 master weights and compute in low precision with "
                      f"{autocast_option}", stacklevel=3)
    return dtype or MASTER_DTYPE


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device, cfg: ModelConfig | None = None) -> torch.dtype:
    """None picks float32 on CPU and the checkpoint's dtype on an accelerator (for inference; trainers
    pass MASTER_DTYPE)."""
    if isinstance(dtype, torch.dtype):
        name = str(dtype).removeprefix("torch.")
    elif dtype in (None, "auto"):
        name = "float32" if device.type == "cpu" or cfg is None else cfg.torch_dtype
    else:
        name = str(dtype)
    if name not in DTYPES:
        raise ValueError(f"unsupported dtype {name!r}; choose one of {', '.join(DTYPES)}")
    if device.type == "cuda" and name == "bfloat16" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"this GPU ({torch.cuda.get_device_name(device)}) cannot run bfloat16; use float16 or float32")
    return DTYPES[name]


def resolve_device(device: str | torch.device | None) -> torch.device:
    try:
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch.cuda.is_available() is False (is this a CPU build of torch?)")
    return device


def load_model(path: str | Path, device: str | torch.device | None = None, dtype=None, max_len: int | None = None) -> DecoderLM:
    """A `DecoderLM`, or a `Qwen2_5_VL` (a `DecoderLM` subclass) for Qwen2.5-VL checkpoints."""
    return load_weights(empty_model(path, device, dtype, max_len), path).eval()


def empty_model(path: str | Path, device: str | torch.device | None = None, dtype=None,
                max_len: int | None = None) -> DecoderLM:
    """The model a checkpoint directory's config describes, its weights not yet loaded (e.g. a
    process reward model loads its backbone's tensors and its head's from one file)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(missing_checkpoint(path))
    vlm = is_vlm(path)
    cfg = VLMConfig.from_dir(path) if vlm else ModelConfig.from_dir(path)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device, cfg.text if vlm else cfg)
    with torch.device("meta"):
        model = (Qwen2_5_VL(cfg, max_len) if vlm else DecoderLM(cfg, max_len)).to(dtype)
    if vlm:
        model.image_config = ImageConfig.from_dir(path)
    model = model.to_empty(device=device)
    model.tie_weights()
    model.rotary.inv_freq = inv_frequencies(model.config, max_len).to(device)  # fp32; to_empty left it uninitialised
    generation = path / "generation_config.json"
    try:
        model.config.generation = json.loads(generation.read_text()) if generation.is_file() else {}
    except json.JSONDecodeError:
        log.warning("%s is not valid JSON; it is not kept", generation)
    return model


def rollout_dtype(dtype: str | None, trained: str | torch.dtype | None) -> str | None:
    """What rollouts of weights trained in `trained` are generated in: `dtype` (rollout.dtype) when set,
    else what loading for inference picks (None: float32 on CPU, the checkpoint's dtype on a GPU),
    but never more precise than half-precision trained weights, whose own dtype is kept."""
    trained = None if trained is None else str(trained).removeprefix("torch.")
    return dtype or (trained if trained in ("bfloat16", "float16") else None)


def generation_model(policy: DecoderLM, path: str | Path, dtype: str | None = None,
                     max_len: int | None = None) -> DecoderLM:
    """What an engine colocated with a trainer generates with: `policy` itself (its weights shared,
    nothing copied) when the rollout dtype (`rollout_dtype`) is the policy's, else a model of `path`'s
    architecture in it on the policy's device, its weights cast from the policy's here and at every
    sync (`LLMEngine.set_weights`): a float32-master policy on a GPU rolls out in the checkpoint's
    bfloat16 (as verl and slime do) at one bfloat16 copy of the weights."""
    dtype = rollout_dtype(dtype, policy.dtype)
    if resolve_dtype(dtype, policy.device, policy.config) == policy.dtype:
        return policy
    engine_model = empty_model(path, policy.device, dtype, max_len).eval()
    engine_model.load_state_dict(policy.state_dict())  # (cast into the copy's dtype)
    engine_model.rotary.inv_freq = policy.rotary.inv_freq.clone()  # the policy's rope (max_len), not recomputed
    return engine_model


def is_vlm(path: str | Path) -> bool:
    """Whether a checkpoint directory holds a vision-language model (Qwen2.5-VL: its config.json's
    'architectures'), which `load_model` loads as a `Qwen2_5_VL`; False for a text model or no config."""
    file = Path(path) / "config.json"
    try:
        config = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError):
        return False  # ModelConfig.from_dir names the problem
    return isinstance(config, dict) and VLM_ARCHITECTURE in (config.get("architectures") or [])


def load_weights(model: DecoderLM, path: str | Path) -> DecoderLM:
    """Copy a checkpoint directory's tensors into `model` (shapes must match its config), all or
    nothing: every file is read and every tensor checked (known name, shape, floating dtype, finite
    values, every parameter covered exactly once) before the first parameter changes, so a
    rejected checkpoint (CheckpointError, FileNotFoundError) leaves the model as it was. The
    price is one CPU copy of the weights held while loading."""
    path = Path(path)
    return load_state(model, read_tensors(path), path)


def load_state(model: DecoderLM, tensors, source: str | Path = "state dict") -> DecoderLM:
    """Copy (Hugging Face name, tensor) pairs into `model`, all or nothing (see `load_weights`)."""
    staged = _stage(model, tensors, source)
    with torch.no_grad():
        for dest, tensor in staged:
            dest.copy_(tensor)
    return model


def _stage(model: DecoderLM, tensors, source) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(parameter or slice of one, checked checkpoint tensor) for every tensor the model uses."""
    cfg = model.config
    params = dict(model.named_parameters(remove_duplicate=False))
    staged, filled, seen, unused = [], {}, set(), []
    tensors = _tied_head_checked(cfg, list(tensors), source)
    for name, tensor in tensors:
        target = hf_to_local(name, cfg)
        if target is None:
            continue
        local, offset, rows = target
        if local not in params:
            unused.append(name)
            continue
        if (local, offset) in seen:
            raise CheckpointError(f"checkpoint {source} gives tensor {name!r} twice")
        seen.add((local, offset))
        dest = params[local] if rows < 0 else params[local][offset:offset + rows]
        _check_tensor(name, tensor, tuple(dest.shape))
        staged.append((dest, tensor))
        filled[local] = filled.get(local, 0) + dest.numel()
    if unused:  # e.g. biases or q/k norms a config leaves out: the model would run without them
        more = f" and {len(unused) - 5} more" if len(unused) > 5 else ""
        raise CheckpointError(f"checkpoint {source} has tensors a {cfg.architecture} with this config.json does not use: "
                              f"{', '.join(unused[:5])}{more} (does config.json describe these weights?)")
    _check_complete(model, params, filled, source)
    return staged


def _tied_head_checked(cfg: ModelConfig, tensors: list, source) -> list:
    """A tied model reads its LM head from the embedding: a separate lm_head.weight in the file is
    dropped if it equals the embedding, and refused if it differs (transformers would untie the two;
    which one a tied model kept would otherwise depend on the order of the files)."""
    if not cfg.tie_word_embeddings:
        return tensors
    heads = [t for n, t in tensors if n == "lm_head.weight"]
    embeds = [t for n, t in tensors if hf_to_local(n, cfg) == ("embed_tokens.weight", 0, -1)]
    if heads and embeds and heads[0].device.type != "meta" and not torch.equal(heads[0], embeds[0]):
        raise CheckpointError(f"checkpoint {source}: config.json ties the word embeddings, but the file's lm_head.weight "
                              "differs from its embedding; set tie_word_embeddings to false if the head is separate")
    return [(n, t) for n, t in tensors if n != "lm_head.weight"] if embeds else tensors


def _check_tensor(name: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != shape:
        raise CheckpointError(f"tensor {name!r} has shape {tuple(tensor.shape)}, the config implies {shape}")
    if not tensor.dtype.is_floating_point or tensor.dtype.itemsize < 2:
        raise CheckpointError(f"tensor {name!r} has dtype {tensor.dtype}; weights must be float16, bfloat16 or float32")
    if tensor.device.type != "meta" and not bool(torch.isfinite(tensor).all()):  # meta: a shape check of real dims
        raise CheckpointError(f"tensor {name!r} holds NaN or infinite values")


def _check_complete(model: DecoderLM, params: dict, filled: dict[str, int], source) -> None:
    if model.config.tie_word_embeddings:
        filled["lm_head.weight"] = filled.get("embed_tokens.weight", 0)
    missing = [n for n, p in params.items() if filled.get(n, 0) < p.numel()]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        hf = [n if n == "lm_head.weight" or n.startswith("visual.") else f"model.{n}" for n in missing[:5]]
        raise CheckpointError(f"checkpoint {source} is missing tensors: {', '.join(hf)}{more}")


def missing_checkpoint(path: Path) -> str:
    """The error for a checkpoint directory that is not there (or is a file); a relative path says where
    it was looked for (a recipe's paths are taken from the current directory, not the recipe's)."""
    if path.exists():
        return f"checkpoint {path} is not a directory (a checkpoint is a directory holding config.json and weights)"
    where = "" if path.is_absolute() else f" (relative to the current directory, {Path.cwd()})"
    return f"checkpoint directory {path} does not exist{where}"


def read_tensors(path: Path) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) from whichever weight files the directory has, all read into memory; an
    unreadable or corrupt file is a CheckpointError naming it."""
    if not path.is_dir():
        raise FileNotFoundError(missing_checkpoint(path))
    index = None  # transformers' order of preference, single files first (an index can outlive its shards)
    for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"):
        if (path / name).is_file():
            index = path / name if name.endswith(".json") else None
            files = _shards(index) if index else [name]
            break
    else:
        raise FileNotFoundError(f"no weights in {path}: expected model.safetensors, pytorch_model.bin "
                                "or the index of either's shards (model.safetensors.index.json, pytorch_model.bin.index.json)")
    tensors = []
    for file in files:
        if not (path / file).is_file():
            raise FileNotFoundError(f"shard {file} listed in {index.name} is missing from {path}")
        tensors += _read_file(path / file, _read_safetensors if file.endswith(".safetensors") else _read_pickle)
    return tensors


def _shards(index: Path) -> list[str]:
    weight_map = _read_file(index, lambda f: json.loads(f.read_text())).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) and "/" not in v for v in weight_map.values()):
        raise CheckpointError(f"{index} has no valid weight_map (tensor name -> shard file in the same directory)")
    return sorted(set(weight_map.values()))


def _read_pickle(file: Path) -> list[tuple[str, torch.Tensor]]:
    """A torch.save'd state dict, loaded with weights_only (no code from the file runs)."""
    return list(torch.load(file, map_location="cpu", weights_only=True).items())


def _read_safetensors(file: Path) -> list[tuple[str, torch.Tensor]]:
    with safe_open(file, framework="pt") as f:
        return [(name, f.get_tensor(name)) for name in f.keys()]


def _read_file(file: Path, read):
    try:
        out = read(file)
    except CheckpointError:
        raise
    except Exception as exc:  # safetensors, pickle, zip, JSON and OS errors alike: the file is unusable
        raise CheckpointError(f"cannot read {file}: {type(exc).__name__}: {exc}") from None
    if isinstance(out, list) and not all(isinstance(t, torch.Tensor) for _, t in out):
        raise CheckpointError(f"{file} holds something other than tensors")
    return out


def local_to_hf(model: DecoderLM) -> dict[str, torch.Tensor]:
    """The model's weights under Hugging Face names, fused projections split back apart."""
    return {k: v.contiguous().cpu() for k, v in hf_views(model).items()}


def hf_views(model: DecoderLM) -> dict[str, torch.Tensor]:
    """Views of the model's parameters under their Hugging Face (hub layout) names."""
    cfg = model.config
    out: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        t = param.detach()
        m = re.match(r"^(layers\.\d+)\.(self_attn|mlp)\.(qkv_proj|gate_up_proj)\.(weight|bias)$", name)
        if m is None:
            out[name if name == "lm_head.weight" or name.startswith("visual.") else f"model.{name}"] = t
            continue
        prefix, block, _, kind = m.groups()
        parts = ("q", "k", "v") if block == "self_attn" else ("gate", "up")
        for proj in parts:
            _, offset, rows = hf_to_local(f"{prefix}.{block}.{proj}_proj.{kind}", cfg)
            out[f"model.{prefix}.{block}.{proj}_proj.{kind}"] = t[offset:offset + rows]
    if cfg.tie_word_embeddings:
        out.pop("lm_head.weight", None)
    return out


def save_model(model: DecoderLM, path: str | Path, tokenizer=None, max_shard_bytes: int = 4 << 30,
               extra_tensors: dict[str, torch.Tensor] | None = None, atomic: bool = False) -> Path:
    """Write config.json, generation_config.json, (sharded) safetensors and the tokenizer;
    `extra_tensors` (e.g. a reward model's head) are saved beside the model's, under their names.
    `atomic`: for a directory that holds other things too (a run's root), the files are written
    elsewhere, flushed and moved in weights last, so `has_weights(path)` means the whole model is
    there, whenever the save was killed or the power cut."""
    path = Path(path)
    if atomic:
        staging = path / ".saving"
        shutil.rmtree(staging, ignore_errors=True)  # what a killed save left
        save_model(model, staging, tokenizer, max_shard_bytes, extra_tensors)
        _move_in(staging, path)
        return path
    path.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    if not (model.dtype == torch.float32 and cfg.torch_dtype in ("bfloat16", "float16")):
        cfg.torch_dtype = str(model.dtype).removeprefix("torch.")
    # else float32 master weights of a half-precision checkpoint (trainers): float32 tensors, so a resume is
    # exact, and config.json still names the dtype inference loads on an accelerator (serve, eval, rollouts)
    vlm = isinstance(model, Qwen2_5_VL)
    config = model.vlm_config.to_dict() if vlm else cfg.to_dict()
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if vlm:
        (path / "preprocessor_config.json").write_text(json.dumps(model.image_config.to_dict(), indent=2) + "\n")
    (path / "generation_config.json").write_text(json.dumps(_generation_config(cfg, tokenizer), indent=2) + "\n")
    extra = {k: v.detach().contiguous().cpu() for k, v in (extra_tensors or {}).items()}
    _write_shards({**local_to_hf(model), **extra}, path, max_shard_bytes)
    if tokenizer is not None:
        tokenizer.save(path)
    return path


def _generation_config(cfg: ModelConfig, tokenizer=None) -> dict:
    """The checkpoint's generation_config.json as loaded (sampling defaults and all), its end-of-sequence
    ids the union of its own, config.json's and the tokenizer's: an instruct checkpoint lists the end
    of a turn there (Qwen2.5's <|im_end|> and <|endoftext|>), and a saved copy must stop as it did."""
    gen = dict(cfg.generation)
    own = gen.get("eos_token_id")
    own = own if isinstance(own, list) else [] if own is None else [own]
    eos = list(dict.fromkeys([*cfg.eos_token_ids, *own, *(tokenizer.eos_token_ids if tokenizer is not None else ())]))
    if eos:
        gen["eos_token_id"] = eos
    if cfg.bos_token_id is not None:
        gen.setdefault("bos_token_id", cfg.bos_token_id)
    return gen


def _write_shards(tensors: dict[str, torch.Tensor], path: Path, max_shard_bytes: int) -> None:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    for stale in list(path.glob("model*.safetensors")) + list(path.glob("model.safetensors.index.json")):
        stale.unlink()
    if len(shards) == 1:
        save_file(shards[0], path / "model.safetensors", metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, path / file, metadata={"format": "pt"})
        weight_map.update({name: file for name in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def has_weights(path: Path) -> bool:
    """Whether a directory holds safetensors weights (one file, or the index of shards)."""
    return any((path / name).is_file() for name in ENTRY_FILES)


def drop_weights(path: Path) -> None:
    """Delete a directory's safetensors weights, the entry file first (`has_weights` is then false)."""
    for stale in [*(path / n for n in ENTRY_FILES), *path.glob("model-*-of-*.safetensors")]:
        stale.unlink(missing_ok=True)


def _move_in(staging: Path, path: Path) -> None:
    """Move a saved model's files into `path`: the old weights go first, the new entry file comes
    last, each step on disk before the next (a model saved twice has its shards replaced too)."""
    flush_dir(staging)
    drop_weights(path)
    for file in sorted(staging.iterdir(), key=lambda f: f.name in ENTRY_FILES):  # (False < True: the entry last)
        if file.name in ENTRY_FILES:
            flush(path)  # the rest is in place before the entry says so
        os.replace(file, path / file.name)
    flush(path)
    staging.rmdir()


def publish_dir(staging: Path, path: Path) -> None:
    """Rename a finished directory to `path` (which must not exist, or be empty), flushed to disk
    first: after a power cut `path` is whole or absent (a kill alone loses nothing written)."""
    flush_dir(staging)
    staging.rename(path)
    flush(path.parent)


def flush_dir(path: Path) -> None:
    """fsync a directory's files and, recursively, its subdirectories' (a checkpoint's reward model), then
    the directory itself."""
    for file in path.iterdir():
        if file.is_dir() and not file.is_symlink():
            flush_dir(file)
        elif file.is_file():
            flush(file)
    flush(path)


def flush(path: Path) -> None:
    """fsync one file or directory (a directory's entries: the names of what was created or renamed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
