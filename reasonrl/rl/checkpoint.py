"""Training checkpoints: a loadable Hugging Face checkpoint plus everything needed to continue.

`RUN/checkpoints/step_000010/` holds config.json, safetensors and the tokenizer (so `reasonrl
eval` and `reasonrl serve` take it as it is) and trainer_state.pt: optimizer and LR-schedule
state, RNG states, step, policy version, prompt cursor and the APRIL buffer. It is written to a
temporary directory, flushed to disk and renamed, so a kill or a power cut mid-save leaves the
previous checkpoint intact. A checkpoint that cannot be read all the same (a disk that lied, a
file damaged by hand) stops a resume with one line naming it and what to do.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from reasonrl.models.loader import CheckpointError, load_state, publish_dir, read_tensors, save_model


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:06d}"


def save_checkpoint(run_dir: str | Path, step: int, model, tokenizer, state: dict[str, Any], keep: int,
                    extra: Callable[[Path], Any] | None = None) -> Path:
    """`extra(directory)` writes what else the checkpoint holds (e.g. a reward model trained beside the
    policy) into it before it is published, so it is whole or absent with the rest."""
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_model(model, tmp, tokenizer)
        if extra is not None:
            extra(tmp)
        torch.save({**state, "rng": rng_state()}, tmp / "trainer_state.pt")
    except Exception as exc:  # a full disk surfaces as OSError, RuntimeError or SafetensorError
        shutil.rmtree(tmp, ignore_errors=True)
        last = latest_checkpoint(run_dir)
        raise OSError(f"saving checkpoint {final.name} failed ({type(exc).__name__}: {str(exc)[:200]}); the last "
                      f"good checkpoint is {last.name if last else 'none'}") from exc
    shutil.rmtree(final, ignore_errors=True)
    publish_dir(tmp, final)  # on disk before older checkpoints go
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and p.name[5:].isdigit()
             and (p / "trainer_state.pt").is_file()]
    return sorted(found, key=checkpoint_step)  # by step: by name, step_1000000 came before step_999999


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def checkpoint_step(path: Path | None) -> int:
    """The training step a checkpoint directory was saved at (0 for none)."""
    return 0 if path is None else int(path.name.removeprefix("step_"))


def load_checkpoint(path: Path, model) -> dict[str, Any]:
    """Load a checkpoint's weights into `model`; its trainer state, the RNG states restored."""
    try:
        tensors = read_tensors(path)
    except (CheckpointError, FileNotFoundError) as exc:  # (each names the file and what is wrong with it)
        raise _damaged(path, str(exc)) from None
    state = load_trainer_state(path)
    load_state(model, tensors, path)
    return state


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        state = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated zip, a bad pickle, an unreadable file: it is unusable
        raise _damaged(path, f"trainer_state.pt: {type(exc).__name__}: {exc}") from None
    set_rng_state(state["rng"])
    return state


def _damaged(path: Path, cause: str) -> CheckpointError:
    """The one-line error for a checkpoint a resume cannot read, and how to go on without it."""
    names = [p.name for p in list_checkpoints(path.parent.parent)]
    earlier = names[:names.index(path.name)] if path.name in names else []
    then = f"resume from {earlier[-1]}" if earlier else "start the run afresh"
    cause = " ".join(cause.split()).split(". ")[0][:300]  # one line, its first sentence (torch's run on)
    return CheckpointError(f"checkpoint {path} cannot be read ({cause}); it is damaged: delete that directory "
                           f"and rerun to {then}")


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
