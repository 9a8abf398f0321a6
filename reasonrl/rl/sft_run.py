"""`reasonrl sft`: an SFT run with the same run directory, checkpoints, resume, metrics and stop
handling as an RL run (see rl/train.py).

    open the run directory -> load model and data (held-out split) -> save the config -> resume
    from the latest checkpoint -> steps until done or Ctrl-C/SIGTERM, checkpointing -> the
    fine-tuned model at the run directory's root
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from reasonrl.config import to_dict
from reasonrl.rl.checkpoint import checkpoint_step, latest_checkpoint, load_checkpoint, save_checkpoint
from reasonrl.rl.metrics import MetricsLogger, StepClock
from reasonrl.rl.run import open_run, save_config
from reasonrl.rl.sft import SFTConfig, SFTTrainer, load_sft_data
from reasonrl.rl.train import RunControl
from reasonrl.rl.update import TrainingDiverged
from reasonrl.stop import StopSignal

FREE_KEYS = {"run.save_every", "run.keep_checkpoints", "run.eval_every"}


@dataclass
class SFTRun:
    model: str
    """Starting checkpoint (Hugging Face directory)."""
    data: str
    """Training JSONL: {"prompt": string or chat messages, "response": string} per line."""
    out: str
    """Run directory: config.yaml, metrics.jsonl, checkpoints/, and the fine-tuned model at its root."""
    eval_data: str | None = None
    """Held-out JSONL of the same form: its response-token loss (eval_loss) at the start, every
    eval_every steps and at the end."""
    eval_fraction: float = 0.0
    """Without eval_data: hold out this share of the training data (drawn with the seed) instead."""
    save_every: int = 100
    """Checkpoint every k steps (and at the end, and when stopped)."""
    keep_checkpoints: int = 2
    """Checkpoints kept in out/checkpoints."""
    eval_every: int = 0
    """Held-out loss every k steps (0: only at the start and the end)."""
    device: str | None = None
    """cpu, cuda or cuda:N (default: cuda when available)."""
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    """The trained weights' dtype (default float32 master weights; bfloat16 halves the memory of weights,
    gradients and AdamW's state but loses the updates below half a unit of a weight, and is warned about)."""

    def __post_init__(self):
        if not 0 <= self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.eval_data and self.eval_fraction:
            raise ValueError("give eval_data or eval_fraction, not both")
        for name in ("save_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0 (0: only at the start and the end), got {self.eval_every}")


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_sft(run: SFTRun, cfg: SFTConfig, control: RunControl = RunControl(), console: bool = True) -> int:
    """Fine-tune to the end (or to a stop signal); the process exit code."""
    from reasonrl.models import Tokenizer, load_model
    from reasonrl.models.chat import ChatEncoder
    from reasonrl.models.loader import drop_weights, has_weights, master_dtype, save_model

    config = {"run": to_dict(run), "sft": to_dict(cfg)}
    out = open_run(run.out, config, overwrite=control.overwrite, accept_changes=control.accept_changes,
                   free_keys=FREE_KEYS, console=console, save=False,
                   inputs=(run.model, run.data, run.eval_data))  # the model is written at the root
    model = load_model(run.model, run.device, master_dtype(run.dtype, "--dtype", "--autocast"))
    tokenizer = Tokenizer.from_dir(run.model)
    latest = latest_checkpoint(out)
    state = load_checkpoint(latest, model)["sft"] if latest is not None else None
    turn = state.get("turn", "response") if state else "template"  # a run goes on training what it started on
    if turn != "template":
        say(f"{out} was started before SFT trained the chat template's own assistant turn: it goes on training "
            "the responses as given")
    encoder = ChatEncoder(tokenizer, model, cfg.chat_template_kwargs)  # with the model: a VLM's image parts load
    data, held = _data(run, cfg, encoder, turn)
    trainer = SFTTrainer(model, data, cfg, turn)
    save_config(out, config, FREE_KEYS)  # only now: a rerun refused on the way (its data unreadable) changes nothing
    logger = MetricsLogger(out, trainer.steps, console)
    if state is not None:
        trainer.load_state_dict(state)
        logger.truncate_after(trainer.step_count)
    else:
        logger.truncate_after(-1)
        logger.log(0, {"eval_loss": trainer.held_out_loss(held)} if held else {})
    if checkpoint_step(latest) >= trainer.steps:
        say(f"{out}: this run is finished (step {trainer.step_count} of {trainer.steps}); nothing to do. "
            "To train longer, raise --epochs and add --accept-changes; to start over, add --overwrite.")
        if not has_weights(out):  # stopped, failed or killed before its model was whole (weights come last)
            say(f"saved {save_model(model, out, tokenizer, atomic=True)} (from {latest})")
        return 0
    # a finished run trained further (--accept-changes): its model at the root is no longer the run's, and a
    # kill before the new one is saved must not leave it to pass for it (the rerun saves it from the checkpoint)
    drop_weights(out)
    with StopSignal("the current step") as stop:
        try:
            _loop(trainer, held, run, logger, tokenizer, out, stop)  # (a TrainingDiverged: the CLI's one-line error)
        finally:
            logger.close()
    if stop and trainer.step_count < trainer.steps:
        say(f"stopped at step {trainer.step_count} of {trainer.steps}; checkpoint: {latest_checkpoint(out)}\n"
            "resume with the same command")
        return stop.exit_code
    path = save_model(model, out, tokenizer, atomic=True)  # (also after a stop in the last step: training is done)
    say(f"saved {path}")
    return 0


def _loop(trainer: SFTTrainer, held, run: SFTRun, logger: MetricsLogger, tokenizer, out: Path, stop) -> None:
    clock = StepClock(trainer.steps)
    while trainer.step_count < trainer.steps and not stop:
        metrics = trainer.step()
        step = trainer.step_count
        if held and (step == trainer.steps or (run.eval_every and step % run.eval_every == 0)):
            metrics["eval_loss"] = trainer.held_out_loss(held)
        metrics.update(clock.tick(step))
        logger.log(step, metrics)
        if metrics["nonfinite_updates"]:
            raise TrainingDiverged(step, 1, 1, latest_checkpoint(out), causes="--lr too high")
        if step % run.save_every == 0 or step == trainer.steps or stop:
            save_checkpoint(out, step, trainer.model, tokenizer, {"sft": trainer.state_dict()}, run.keep_checkpoints)


def _data(run: SFTRun, cfg: SFTConfig, encoder, turn):
    """(training examples, held-out examples)."""
    data = load_sft_data(run.data, encoder, cfg.chat, cfg.max_len, turn)
    if run.eval_data:
        return data, load_sft_data(run.eval_data, encoder, cfg.chat, cfg.max_len, turn)
    if not run.eval_fraction:
        return data, []
    order = list(range(len(data)))
    random.Random(cfg.seed).shuffle(order)
    cut = max(1, round(len(data) * run.eval_fraction))
    if cut >= len(data):
        raise ValueError(f"eval_fraction {run.eval_fraction} leaves no training example of {len(data)}")
    return [data[i] for i in sorted(order[cut:])], [data[i] for i in sorted(order[:cut])]
