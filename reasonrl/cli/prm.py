"""`reasonrl prm label | train | judge | best-of-n`: process reward models (reasonrl/reward/prm/)."""

from __future__ import annotations

import argparse
import dataclasses
import json

from reasonrl.cli import Command
from reasonrl.cli.flags import add_flags, values
from reasonrl.config import to_dict


def _steps(parser: argparse.ArgumentParser, unset: str):
    from reasonrl.reward.prm.steps import StepFormat

    add_flags(parser, StepFormat, title=f"step format (StepFormat; flags left unset: {unset})",
              defaults={f.name: None for f in dataclasses.fields(StepFormat)})


def _step_format(args, default):
    """The step format the flags give, over `default` where they leave a field unset."""
    from reasonrl.reward.prm.steps import StepFormat

    given = {k: v for k, v in values(args, StepFormat).items() if v is not None}
    return StepFormat(**{**to_dict(default), **given})


def label(parser: argparse.ArgumentParser):
    from reasonrl.engine.config import EngineConfig
    from reasonrl.reward.prm.labels import LabelJob
    from reasonrl.reward.prm.steps import StepFormat

    add_flags(parser, LabelJob, title="labelling")
    _steps(parser, "the environment's, a space for sums: (one step per running total), else a blank line")
    add_flags(parser, EngineConfig, title="engine", only=["max_num_seqs", "kv_cache_memory", "max_model_len"])

    def run(args) -> int:
        from reasonrl.reward.prm.labels import run_label_job

        from reasonrl.envs.registry import load_environment

        job = LabelJob(**values(args, LabelJob))
        fmt = _step_format(args, StepFormat(delimiter=load_environment(job.env).step_delimiter))
        result = run_label_job(job, fmt, values(args, EngineConfig))
        print(json.dumps(result["quality"], indent=2))
        return 0

    return run


def train(parser: argparse.ArgumentParser):
    from reasonrl.reward.prm.model import PRMConfig
    from reasonrl.reward.prm.run import PRMTrainJob
    from reasonrl.reward.prm.steps import StepFormat
    from reasonrl.reward.prm.train import PRMTrainConfig
    from reasonrl.rl.train import RunControl

    add_flags(parser, PRMTrainJob, title="job")
    add_flags(parser, PRMTrainConfig, title="training (PRMTrainConfig)")
    add_flags(parser, PRMConfig, title="model (PRMConfig)")
    _steps(parser, "the one `prm label` cut the rows with")
    add_flags(parser, RunControl, title="output directory", only=["overwrite"])  # (trained in one go: no resume)

    def run(args) -> int:
        from reasonrl.reward.prm.run import recorded_step_format, run_train

        job = PRMTrainJob(**values(args, PRMTrainJob))
        cfg = PRMConfig(**values(args, PRMConfig), steps=_step_format(args, recorded_step_format(job.data)))
        result = run_train(job, cfg, PRMTrainConfig(**values(args, PRMTrainConfig)),
                           control=RunControl(**values(args, RunControl)))
        print(json.dumps(result.get("eval", {}), indent=2))
        return 0

    return run


def judge(parser: argparse.ArgumentParser):
    from reasonrl.reward.prm.run import JudgeJob

    add_flags(parser, JudgeJob)

    def run(args) -> int:
        from reasonrl.reward.prm.run import run_judge

        print(json.dumps(run_judge(JudgeJob(**values(args, JudgeJob))), indent=2))
        return 0

    return run


def best_of_n(parser: argparse.ArgumentParser):
    from reasonrl.reward.prm.run import BestOfNJob

    add_flags(parser, BestOfNJob)

    def run(args) -> int:
        from reasonrl.reward.prm.run import run_best_of_n

        result = run_best_of_n(BestOfNJob(**values(args, BestOfNJob)))
        for rule, by_n in result.items():
            print(f"{rule:<12} " + "  ".join(f"{n}:{v['accuracy']:.3f}" for n, v in by_n.items()))
        return 0

    return run


COMMANDS = {
    "label": Command("label steps by Monte Carlo completion (weak and strong completers) against exact labels",
                     "reasonrl.cli.prm:label"),
    "train": Command("train a PRM (per-step cross-entropy; ORM init, negative up-sampling)", "reasonrl.cli.prm:train"),
    "judge": Command("ProcessBench-form step judgement of a PRM on exactly labelled solutions", "reasonrl.cli.prm:judge"),
    "best-of-n": Command("best-of-N by PRM against majority vote and an ORM, bootstrap intervals",
                         "reasonrl.cli.prm:best_of_n"),
}


def raft(parser: argparse.ArgumentParser):
    from reasonrl.rl.raft import RaftConfig
    from reasonrl.rl.train import RunControl

    add_flags(parser, RaftConfig)
    add_flags(parser, RunControl, title="run directory", only=["overwrite", "accept_changes"])

    def run(args) -> int:
        from reasonrl.rl.raft import run_raft
        from reasonrl.stop import StopSignal

        cfg = RaftConfig(**values(args, RaftConfig))
        with StopSignal("the current round") as stop:
            history = run_raft(cfg, RunControl(**values(args, RunControl)), stop)
        return stop.exit_code if len(history) <= cfg.rounds else 0

    return run
