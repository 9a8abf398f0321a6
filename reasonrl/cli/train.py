"""`reasonrl train`, `sft`, `report`, `distill-draft`: training runs."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import textwrap
from pathlib import Path

import yaml

from reasonrl.cli.flags import add_flags, command_line, values


def train(parser: argparse.ArgumentParser):
    from reasonrl.rl.train import RunControl

    parser.add_argument("config", nargs="?", help="run recipe, a YAML file (see recipes/; a run's RUN/config.yaml "
                                                  "is one); none: the embedded demo, what `make demo` runs")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a recipe value, e.g. --set optim.lr=1e-5 (repeatable; keys below)")
    parser.add_argument("--ray", action="store_true", help="place rollout engines and the trainer on a Ray cluster "
                        "(short for --set cluster.ray=true; the cluster section below says how; docs/scale.md)")
    add_flags(parser, RunControl, title="run directory")
    parser.epilog = recipe_reference()

    def run(args) -> int:
        from reasonrl.rl.config import load_config
        from reasonrl.rl.train import run_training

        overrides, control = parse_overrides(args.set), RunControl(**values(args, RunControl))
        if args.ray:
            overrides["cluster.ray"] = True
        if args.config is None:
            return demo(overrides, control)
        _check_own_run(Path(args.config), overrides)
        return run_training(load_config(args.config, overrides), control)

    return run


def _check_own_run(path: Path, overrides: dict) -> None:
    """A run's own RUN/config.yaml names its directories as they were given when it started,
    relative ones from that working directory: from another one it would start a new run elsewhere,
    or (with --set train.run_dir naming the run) resume it reading its model and data from the wrong
    place. Refused when the file sits in a run that has done work, names that run relatively, and
    this is not the directory it was started in; --set train.run_dir naming another directory
    starts a new run from the config, as from any recipe."""
    from reasonrl.rl.config import ConfigError, read_yaml
    from reasonrl.rl.run import CONFIG_FILE, WORK

    folder = path.resolve().parent
    if path.name != CONFIG_FILE or not any((folder / w).exists() for w in WORK):
        return
    saved = ((read_yaml(path) or {}).get("train") or {}).get("run_dir")
    given = overrides.get("train.run_dir")
    if not isinstance(saved, str) or Path(saved).is_absolute() or Path(saved).resolve() == folder:
        return
    if isinstance(given, str) and given and Path(given).resolve() != folder:
        return  # a new run from this config
    tail = Path(os.path.normpath(saved)).parts
    start = Path(*folder.parts[:-len(tail)]) if ".." not in tail and folder.parts[-len(tail):] == tail else None
    raise ConfigError(f"{path} is the config of the run in {folder}, and its relative paths (train.run_dir "
                      f"{saved!r}, and any model or data path) are from the directory the run was started in: "
                      f"run it from there{f' ({start})' if start else ''}")


def demo(overrides: dict, control) -> int:
    from reasonrl.demo.run import run_demo
    from reasonrl.stop import StopSignal

    if control.accept_changes:
        raise ValueError("the demo always starts afresh (the last run is kept aside): --accept-changes has no meaning "
                         "without a recipe")
    with StopSignal("the current step") as stop:
        summary = run_demo(overrides=overrides, stop=stop)
    return 0 if summary is not None else stop.exit_code


def parse_overrides(pairs: list[str], sections: dict[str, type] | None = None) -> dict:
    """`--set section.key=value` pairs as {"section.key": value}. A text key of `sections` (name ->
    dataclass; default: the RL run's) takes the value as typed (`a # b` keeps its `#`, `2024` stays
    text; `null`, or nothing, is none, which a key that may not be none refuses by name: an unset
    `$OUT` in `--set train.run_dir=$OUT` is no run directory; quoted, as YAML quotes, it is the text
    inside: `'null'`, `" a"`); any other value is read as YAML."""
    from reasonrl.config import strip_optional, type_hints
    from reasonrl.rl.config import sections as run_sections

    sections = sections or run_sections()
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--set expects section.key=value, got {pair!r}")
        section, _, name = key.partition(".")
        hint = type_hints(sections[section]).get(name) if section in sections else None
        quoted = len(value) >= 2 and value[0] == value[-1] and value[0] in "'\""
        if strip_optional(hint) is str and not quoted:  # (as YAML, `a # b` lost its comment and 2024 was a number)
            out[key] = None if value in ("", "null") else value
            continue
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ValueError(f"--set {key}: {value!r} is not valid YAML ({exc.problem or exc})") from None
    return out


def recipe_reference(sections: dict[str, type] | None = None) -> str:
    """Every recipe key with its default and documentation, from the config dataclasses (of `sections`,
    name -> dataclass; default: the RL run's)."""
    from reasonrl.config import default_of, field_docs
    from reasonrl.rl.config import sections as run_sections

    lines = ["recipe keys (section.key: default; documentation):"]
    for name, cls in (sections or run_sections()).items():
        docs = field_docs(cls)
        lines.append(f"  {name}:")
        for f in dataclasses.fields(cls):
            doc = textwrap.shorten(docs.get(f.name, ""), 150)
            lines.append(f"    {f.name} = {default_of(f)!r}" + (f"\n        {doc}" if doc else ""))
    return "\n".join(lines)


def sft(parser: argparse.ArgumentParser):
    from reasonrl.rl.sft import SFTConfig
    from reasonrl.rl.sft_run import SFTRun
    from reasonrl.rl.train import RunControl

    add_flags(parser, SFTRun, title="run")
    add_flags(parser, SFTConfig, title="training (SFTConfig)")
    add_flags(parser, RunControl, title="run directory")

    def run(args) -> int:
        from reasonrl.rl.sft_run import run_sft

        return run_sft(SFTRun(**values(args, SFTRun)), SFTConfig(**values(args, SFTConfig)),
                       RunControl(**values(args, RunControl)))

    return run


def report(parser: argparse.ArgumentParser):
    parser.add_argument("run_dir", help="a run directory (train, sft, or kernel-agent) holding metrics.jsonl or summary.json")

    def run(args) -> int:
        from reasonrl.agents.geak.report import is_agent_run

        if is_agent_run(args.run_dir):
            from reasonrl.agents.geak.report import write_report
        else:
            from reasonrl.rl.report import write_report
        print(write_report(args.run_dir))
        return 0

    return run


def distill_draft(parser: argparse.ArgumentParser):
    from reasonrl.engine.spec.distill import DistillConfig, DistillJob

    add_flags(parser, DistillJob, title="job")
    add_flags(parser, DistillConfig, title="training (DistillConfig)")

    def run(args) -> int:
        from reasonrl.engine.spec.distill import DistillInterrupted, run_distill

        try:
            out = run_distill(DistillJob(**values(args, DistillJob)), DistillConfig(**values(args, DistillConfig)))
        except DistillInterrupted as exc:
            if exc.rest is None:
                raise
            command = shlex.join(["reasonrl", "distill-draft", *command_line(*exc.rest)])
            raise KeyboardInterrupt(f"{exc}; to train the rest of it, continue with:\n  {command}") from None
        print(f"saved {out}")
        return 0

    return run
