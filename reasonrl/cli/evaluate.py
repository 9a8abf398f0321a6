"""`reasonrl eval` and `reasonrl data`."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from reasonrl.cli import Command, resolve
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
            print(f"reasonrl eval: {exc}", file=sys.stderr)
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

    def __post_init__(self):
        if isinstance(self.n, bool) or self.n < 1:
            raise ValueError(f"--n must be a positive number of problems, got {self.n}")


@dataclass
class SandJob:
    recipe: str = field(metadata={"positional": True})
    """The recipe, a YAML file (see docs/sand.md, recipes/sand-math.yaml)."""
    out: str
    """Run directory (config.yaml, ledger/, calls/, problems.jsonl, sft*.jsonl, report.md); rerunning resumes it."""


DATASETS = {
    "ttt": Command("TTT-Bench problems as JSONL", "reasonrl.cli.evaluate:data_ttt"),
    "sand": Command("SAND-Math: novel, verified, rated problems from an LLM, with Difficulty Hiking (resumable)",
                    "reasonrl.cli.evaluate:data_sand"),
    "shapes": Command("shapes-world images with questions, captions or layouts (JSONL + PNG)",
                      "reasonrl.cli.evaluate:data_shapes"),
    "lvr": Command("LVR SFT data: shapes-world detail questions with their regions and latent spans (JSONL + PNG)",
                   "reasonrl.cli.evaluate:data_lvr"),
    "doctor": Command("ImageDoctor judge data: flawed shapes-world images, exact flaw maps, analytic scores (JSONL + PNG + NPZ)",
                      "reasonrl.cli.evaluate:data_doctor"),
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


def exporter(config: str, export: str, message):
    """The builder of a `reasonrl data` command that writes a dataset: flags from the config
    dataclass `config`, then `export(config)` (both "module:name", imported when the command is
    built or run); prints `message(config, written)`."""
    def build(parser: argparse.ArgumentParser):
        config_cls = resolve(config)
        add_flags(parser, config_cls)

        def run(args) -> int:
            cfg = config_cls(**values(args, config_cls))
            print(message(cfg, resolve(export)(cfg)))
            return 0

        return run

    return build


data_shapes = exporter(
    "reasonrl.vision.world.export:ShapesExportConfig", "reasonrl.vision.world.export:export_command",
    lambda cfg, n: f"wrote {n} {cfg.task} problems to {Path(cfg.out) / (cfg.task + '.jsonl')} "
                   f"(images in {Path(cfg.out) / 'images'})")
data_lvr = exporter(
    "reasonrl.vision.lvr.export:LVRDataConfig", "reasonrl.vision.lvr.export:export_lvr",
    lambda cfg, n: f"wrote {n} LVR examples to {Path(cfg.out) / 'lvr.jsonl'} (images in {Path(cfg.out) / 'images'})")
data_doctor = exporter(
    "reasonrl.reward.imagedoctor.export:DoctorDataConfig", "reasonrl.reward.imagedoctor.export:export_judge_data",
    lambda cfg, n: f"wrote {n} judged images to {Path(cfg.out) / 'judge.jsonl'} (images/, maps/ beside it)")


def data_sand(parser: argparse.ArgumentParser):
    from reasonrl.cli.train import parse_overrides, recipe_reference
    from reasonrl.data.sand.sections import section_types
    from reasonrl.rl.train import RunControl

    add_flags(parser, SandJob)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a recipe value, e.g. --set generate.problems=50 (repeatable)")
    add_flags(parser, RunControl, title="run directory")
    parser.epilog = recipe_reference(section_types())

    def run(args) -> int:
        from reasonrl.data.sand import StageIncomplete, Stopped, load_recipe, run_sand
        from reasonrl.eval import EndpointError
        from reasonrl.stop import StopSignal

        job, control = SandJob(**values(args, SandJob)), RunControl(**values(args, RunControl))
        recipe = load_recipe(job.recipe, parse_overrides(args.set, section_types()))
        with StopSignal("the calls in flight are cancelled") as stop:
            try:
                run_sand(recipe, job.out, stop, overwrite=control.overwrite, accept_changes=control.accept_changes)
            except Stopped as exc:
                print(f"reasonrl data sand: stopped in {exc}; what finished is saved. Rerun the same command to "
                      "resume.", file=sys.stderr)
                return stop.exit_code
            except (EndpointError, StageIncomplete) as exc:
                print(f"reasonrl data sand: {exc}", file=sys.stderr)
                return 1
        print(Path(job.out) / "report.md")
        return 0

    return run
