"""`reasonrl train RECIPE`: one RL run from its config to its report, safe to interrupt and rerun.

    open the run directory (a changed config refused) -> finished? say so -> build environment,
    policy, trainer -> save the config -> train until done or Ctrl-C/SIGTERM -> checkpoint ->
    report, or how to resume
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from reasonrl.rl.checkpoint import checkpoint_step, latest_checkpoint
from reasonrl.rl.config import RunConfig
from reasonrl.rl.run import open_run, save_config
from reasonrl.stop import StopSignal


@dataclass
class RunControl:
    overwrite: bool = False
    """Delete what the run directory holds and start afresh."""
    accept_changes: bool = False
    """Continue a run whose saved config differs from this one (the changes are recorded in
    RUN/config_changes.jsonl); without it such a rerun is refused, naming the differing keys."""


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_training(cfg: RunConfig, control: RunControl = RunControl(), console: bool = True,
                 resume: str | None = None) -> int:
    """Train `cfg` to its end (or to a stop signal); the process exit code. `resume`: how a stopped run
    is resumed, for a caller whose own command does it (LVR's --stages grpo); None: `reasonrl train
    RUN/config.yaml`."""
    from reasonrl.envs.registry import load_environment
    from reasonrl.models import Tokenizer, load_model
    from reasonrl.models.loader import master_dtype
    from reasonrl.rl.report import write_report
    from reasonrl.rl.trainer import Trainer

    run_dir = open_run(cfg.train.run_dir, cfg.to_dict(), overwrite=control.overwrite,
                       accept_changes=control.accept_changes, console=console, save=False,
                       inputs=(cfg.model.path, *_env_files(cfg)) if control.overwrite else ())  # it would delete them
    resume = resume or (f"reasonrl train {run_dir / 'config.yaml'}"
                        + ("" if run_dir.is_absolute() else f" (from {Path.cwd()})"))
    done = checkpoint_step(latest_checkpoint(run_dir))
    if done >= cfg.train.steps:
        say(f"{run_dir}: this run is finished (step {done} of {cfg.train.steps}); nothing to do. To train longer, raise "
            "train.steps and add --accept-changes; to start over, add --overwrite.")
        save_config(run_dir, cfg.to_dict())
        # stopped or killed during its last step, before the report, or trained further since (--accept-changes)
        # and killed after its last checkpoint: the report is rewritten from the metrics (it is cheap)
        say(f"report: {write_report(run_dir)}")
        return 0
    env = load_environment(cfg.env.name)
    if cfg.model.init and not (Path(cfg.model.path) / "config.json").is_file():
        from reasonrl.models.tiny import make_starting_checkpoint

        corpus = [m["content"] for p in env.prompts(n=256, seed=cfg.train.seed) for m in p.messages]
        make_starting_checkpoint(cfg.model.path, cfg.model.init, corpus, cfg.train.seed)
        say(f"made a tiny random {cfg.model.init} checkpoint in {cfg.model.path} (model.init)")
    device = "cpu" if cfg.cluster.ray else cfg.model.device  # on Ray the actors hold the devices; this copy is for checkpoints
    dtype = master_dtype(cfg.model.dtype, "model.dtype", "model.autocast")
    policy = load_model(cfg.model.path, device, dtype, max_len=cfg.engine.max_model_len)
    trainer = Trainer(cfg, env, policy, Tokenizer.from_dir(cfg.model.path), console=console)
    save_config(run_dir, cfg.to_dict())  # only now: a rerun refused on the way leaves the run as it was
    with StopSignal("the current step") as stop:
        try:
            trainer.train(stop)  # (a TrainingDiverged is the CLI's one-line error, exit 1)
        finally:
            trainer.close()
            if hasattr(env, "close"):
                env.close()
    checkpoint = latest_checkpoint(run_dir)
    if stop:
        say(f"stopped at step {trainer.step} of {cfg.train.steps}; checkpoint: {checkpoint}\nresume with: {resume}")
        return stop.exit_code
    report = write_report(run_dir)
    print(f"run directory: {run_dir}\nreport: {report}\ncheckpoint: {checkpoint}")
    return 0


def _env_files(cfg: RunConfig) -> list[str]:
    """The files the environment specs name (`math:FILE`, `jsonl:FILE?...`), where they exist."""
    paths = [spec.split(":", 1)[1].split("?", 1)[0] for spec in (cfg.env.name, cfg.env.eval_name) if spec and ":" in spec]
    return [p for p in paths if p and Path(p).exists()]
