"""Training runs of the image models, with the run machinery of `reasonrl train` and `reasonrl sft`.

    open the run directory (config saved; a changed config refused, rl/run.py) -> resume from the
    latest checkpoint -> steps until done or Ctrl-C/SIGTERM, logging metrics.jsonl and
    checkpointing -> the trained model at the run directory's root -> report.md with plots

A `Job` is anything with `steps`, `step_count`, `model` (saved with `save`), `train_step()`,
`evaluate()` (held-out `eval_*` metrics) and `state_dict()`/`load_state_dict()` for the rest of
its state (optimizer, data cursor). Checkpoints use the text trainer's layout
(`RUN/checkpoints/step_NNNNNN/` with the model and trainer_state.pt, written to a temporary
directory and renamed), so `latest_checkpoint` and `reasonrl report` read both.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from reasonrl.config import min_ints
from reasonrl.rl.checkpoint import checkpoint_dir, latest_checkpoint, list_checkpoints, load_trainer_state, rng_state
from reasonrl.rl.metrics import MetricsLogger, StepClock
from reasonrl.rl.run import open_run, save_config
from reasonrl.rl.train import RunControl
from reasonrl.rl.update import resume_optimizer
from reasonrl.stop import StopSignal
from reasonrl.vision.gen.io import load_weights, save_model_dir

class JobState:
    """What the image jobs share: the model saved to and loaded from a directory, and the step,
    optimizer and (when there is one) learning-rate schedule in checkpoints. A job sets `model`,
    `optimizer`, `step_count` and, if it schedules its learning rate, `scheduler`."""

    scheduler = None

    def save(self, path: Path) -> Path:
        return save_model_dir(self.model, self.model.config, path)

    def load(self, path: Path) -> None:
        load_weights(self.model, path)

    def state_dict(self) -> dict:
        state = {"step": self.step_count, "optimizer": self.optimizer.state_dict()}
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.step_count = state["step"]
        resume_optimizer(self.optimizer, self.scheduler, lambda: self.optimizer.load_state_dict(state["optimizer"]),
                         state.get("scheduler"))


FREE_KEYS = {"run.save_every", "run.keep_checkpoints", "run.eval_every", "run.out"}


@dataclass
class RunSettings:
    out: str
    """Run directory: config.yaml, metrics.jsonl, checkpoints/, report.md, and the trained model at its root."""
    save_every: int = 200
    """Checkpoint every k steps (and at the end, and when stopped)."""
    keep_checkpoints: int = 1
    """Checkpoints kept in out/checkpoints."""
    eval_every: int = 0
    """Held-out metrics every k steps (0: only at the start and the end)."""

    def __post_init__(self):
        min_ints(self, {"save_every": 1, "keep_checkpoints": 1, "eval_every": 0})


class Job(Protocol):
    steps: int
    step_count: int

    def train_step(self) -> dict[str, float]: ...
    def evaluate(self) -> dict[str, float]: ...
    def save(self, path: Path) -> Path: ...
    def load(self, path: Path) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_job(job: Job, run: RunSettings, config: dict[str, Any], control: RunControl = RunControl(),
            console: bool = True) -> int:
    """Train `job` to its end (or to a stop signal); the process exit code. `config` is what
    config.yaml records (a rerun with other values is refused unless accepted)."""
    from reasonrl.rl.report import write_report

    out = open_run(run.out, config, overwrite=control.overwrite, accept_changes=control.accept_changes,
                   free_keys=FREE_KEYS, console=console, save=False)
    resumed = _resume(job, out, console)
    # only now: a rerun refused on the way (an accepted model change its checkpoint does not fit) changes nothing
    save_config(out, config, FREE_KEYS)
    logger = MetricsLogger(out, job.steps, console)
    logger.truncate_after(job.step_count if resumed else -1)
    if not resumed:
        logger.log(0, job.evaluate())
    elif job.step_count >= job.steps:
        say(f"{out}: this run is finished (step {job.step_count} of {job.steps}); nothing to do. To train longer, "
            "raise the steps and add --accept-changes; to start over, add --overwrite.")
        return 0
    with StopSignal("the current step") as stop:
        _loop(job, run, logger, out, stop)
    logger.close()
    if stop:
        say(f"stopped at step {job.step_count} of {job.steps}; checkpoint: {latest_checkpoint(out)}\n"
            "resume with the same command")
        return stop.exit_code
    job.save(out)
    report = write_report(out)
    if console:
        say(f"model: {out}\nreport: {report}")
    return 0


def _loop(job: Job, run: RunSettings, logger: MetricsLogger, out: Path, stop) -> None:
    clock = StepClock(job.steps)
    while job.step_count < job.steps and not stop:
        metrics = job.train_step()
        step = job.step_count
        if step == job.steps or (run.eval_every and step % run.eval_every == 0):
            metrics.update(job.evaluate())
        metrics.update(clock.tick(step))
        logger.log(step, metrics)
        if step % run.save_every == 0 or step == job.steps or stop:
            save_job_checkpoint(out, job, run.keep_checkpoints)


def save_job_checkpoint(run_dir: Path, job: Job, keep: int) -> Path:
    final = checkpoint_dir(run_dir, job.step_count)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    job.save(tmp)
    torch.save({"step": job.step_count, "job": job.state_dict(), "rng": rng_state()}, tmp / "trainer_state.pt")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _resume(job: Job, out: Path, console: bool) -> bool:
    path = latest_checkpoint(out)
    if path is None:
        return False
    job.load(path)
    state = load_trainer_state(path)  # also restores the RNG states
    job.load_state_dict(state["job"])
    if console:
        say(f"resumed from {path} (step {job.step_count} of {job.steps})")
    return True
