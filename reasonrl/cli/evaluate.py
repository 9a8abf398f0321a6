"""`reasonrl eval` and `reasonrl data`."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from reasonrl.cli import Command
from reasonrl.cli.engine import add_engine_flags, add_model_flags, engine_options, model_options
from reasonrl.cli.flags import add_flags, values


def evaluate(parser: argparse.ArgumentParser):
    from reasonrl.eval.harness import EvalConfig

    add_flags(parser, EvalConfig, title="evaluation (EvalConfig)")
    add_model_flags(parser, with_path=False)
    add_engine_flags(parser, exclude=("seed",))

    def run(args) -> int:
        from reasonrl.eval import EndpointError, IncompleteEval, run_eval
        from reasonrl.stop import StopSignal

        options = values(args, EvalConfig)
        options["engine_kwargs"] = {**engine_options(args), **model_options(args)}
        benchmark, model, out = options.pop("benchmark"), options.pop("model"), options.pop("out")
        try:
            with StopSignal("the samples in flight are cancelled") as stop:
                summary = run_eval(benchmark, model=model, out=out, stop=stop, **options)
        except EndpointError as exc:
            print(f"reasonrl eval: {exc}", file=sys.stderr)
            return 1
        except IncompleteEval as exc:
            print(f"reasonrl eval: {exc} (rerun the same command to ask only for the missing samples)", file=sys.stderr)
            return 1
        print(Path(out) / "summary.md")
        print((Path(out) / "summary.md").read_text())
        if stop:
            print(f"reasonrl eval: stopped; the summary counts the samples that finished. Rerun the same command to "
                  "ask only for the missing ones.", file=sys.stderr)
            return stop.exit_code
        return 0 if summary else 1

    return run


@dataclass
class TTTData:
    game: Literal["oTTT", "dTTT", "cTTT", "sTTT"]
    """The game."""
    out: str
    """JSONL file to write."""
    n: int = 1000
    """Problems (fewer when the game's whole problem space is smaller)."""
    seed: int = 0
    """Which problems: the same seed gives the same file."""


DATASETS = {
    "ttt": Command("TTT-Bench problems as JSONL", "reasonrl.cli.evaluate:data_ttt"),
    "shapes": Command("shapes-world images with questions, captions or layouts (JSONL + PNG)",
                      "reasonrl.cli.evaluate:data_shapes"),
}


def data_ttt(parser: argparse.ArgumentParser):
    add_flags(parser, TTTData)

    def run(args) -> int:
        from reasonrl.envs.ttt import export_jsonl

        job = TTTData(**values(args, TTTData))
        written = export_jsonl(job.game, job.n, job.seed, job.out)
        note = f" (the whole {job.game} problem space has fewer)" if written < job.n else ""
        print(f"wrote {written} {job.game} problems to {job.out}{note}")
        return 0

    return run


def data_shapes(parser: argparse.ArgumentParser):
    from reasonrl.vision.world import ShapesDataConfig

    add_flags(parser, ShapesDataConfig)

    def run(args) -> int:
        from reasonrl.vision.world import export_shapes

        cfg = ShapesDataConfig(**values(args, ShapesDataConfig))
        written = export_shapes(cfg)
        print(f"wrote {written} {cfg.task} problems to {Path(cfg.out) / (cfg.task + '.jsonl')} (images in "
              f"{Path(cfg.out) / 'images'})")
        return 0

    return run
