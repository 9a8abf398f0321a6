"""Experiment trackers a run can also log to, besides its metrics.jsonl: TensorBoard and Weights &
Biases. Both are optional packages; asking for one that is not installed is an error at start,
before any compute, with the command that installs it.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Protocol


class Tracker(Protocol):
    def log(self, step: int, scalars: dict[str, float]) -> None: ...

    def close(self) -> None: ...


class MissingTracker(ValueError):
    pass


def _need(module: str, extra: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingTracker(f"train.trackers: {extra} was asked for but is not installed; install it with "
                             f"pip install 'reasonrl[{extra}]' (or drop it from train.trackers)") from None


class TensorBoardTracker:
    """Its writer opens at the first step logged, with that step as `purge_step`: after a resume,
    the events an interrupted run logged past its checkpoint are dropped, as metrics.jsonl drops
    them (else TensorBoard plots the re-run steps twice)."""

    def __init__(self, run_dir: Path):
        _need("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.make_writer, self.dir, self.writer = SummaryWriter, str(run_dir / "tensorboard"), None

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if self.writer is None:
            self.writer = self.make_writer(self.dir, purge_step=step)
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class WandbTracker:
    """One W&B run per run directory: its id is kept in RUN/wandb_id, so a resumed run continues it.
    The project is $WANDB_PROJECT, else "reasonrl"; the other WANDB_* variables apply as usual."""

    def __init__(self, run_dir: Path, config: dict[str, Any]):
        wandb = _need("wandb", "wandb")
        id_file = run_dir / "wandb_id"
        if not id_file.is_file():
            id_file.write_text(uuid.uuid4().hex[:12])
        try:
            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "reasonrl"), name=run_dir.name, dir=str(run_dir),
                                  config=config, id=id_file.read_text().strip(), resume="allow")
        except Exception as exc:  # no login, no network: one line naming the ways out, not wandb's traceback
            raise MissingTracker(f"train.trackers: wandb could not start ({type(exc).__name__}: {str(exc)[:200]}); "
                                 "log in (wandb login), set WANDB_MODE=offline, or drop it from train.trackers") from None

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


def make_trackers(names: list[str], run_dir: str | Path, config: dict[str, Any]) -> list[Tracker]:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    makers = {"tensorboard": lambda: TensorBoardTracker(run_dir), "wandb": lambda: WandbTracker(run_dir, config)}
    unknown = [n for n in names if n not in makers]
    if unknown:
        raise MissingTracker(f"train.trackers: unknown tracker(s) {unknown}; known: {', '.join(makers)}")
    return [makers[n]() for n in names]
