"""Training checkpoints: a loadable Hugging Face checkpoint plus everything needed to continue.

`RUN/checkpoints/step_000010/` holds config.json, safetensors and the tokenizer (so `reasonrl
eval` and `reasonrl serve` take it as it is) and trainer_state.pt: optimizer and LR-schedule
state, RNG states, step, policy version, prompt cursor and the APRIL buffer. It is written to a
temporary directory and renamed, so a kill mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reasonrl.models.loader import save_model


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:06d}"


def save_checkpoint(run_dir: str | Path, step: int, model, tokenizer, state: dict[str, Any], keep: int) -> Path:
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_model(model, tmp, tokenizer)
        torch.save({**state, "rng": rng_state()}, tmp / "trainer_state.pt")
    except Exception as exc:  # a full disk surfaces as OSError, RuntimeError or SafetensorError
        shutil.rmtree(tmp, ignore_errors=True)
        last = latest_checkpoint(run_dir)
        raise OSError(f"saving checkpoint {final.name} failed ({type(exc).__name__}: {str(exc)[:200]}); the last "
                      f"good checkpoint is {last.name if last else 'none'}") from exc
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
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


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    state = torch.load(Path(path) / "trainer_state.pt", map_location="cpu", weights_only=False)
    set_rng_state(state["rng"])
    return state


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
