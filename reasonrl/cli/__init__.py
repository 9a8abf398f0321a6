"""`reasonrl <verb>`: each verb builds its components from config dataclasses and calls the library.

A verb's parser is built only when that verb runs (so `reasonrl --help` and `reasonrl --version`
import nothing heavy); its flags are generated from the dataclasses that own the options
(`flags.py`). Bad input ends with one line naming it and exit code 2, not a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from dataclasses import dataclass

from reasonrl import __version__


@dataclass(frozen=True)
class Command:
    help: str
    target: str
    """"module:name" of a function that adds the command's arguments to a parser and returns the
    function that runs it (called with the parsed arguments, returns the exit code), or of a table
    of subcommands ({name: Command}, e.g. the bench workloads)."""

    def resolve(self):
        return resolve(self.target)


def resolve(target: str):
    """The object named by "module:name", imported now (commands import their modules lazily)."""
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


VERBS = {
    "serve": Command("OpenAI-compatible HTTP server over the engine", "reasonrl.cli.engine:serve"),
    "generate": Command("generate from prompts given as arguments or on stdin", "reasonrl.cli.engine:generate"),
    "train": Command("RL post-training (GRPO/DAPO/GSPO, APRIL rollouts) from a YAML recipe; none: the demo",
                     "reasonrl.cli.train:train"),
    "sft": Command("supervised fine-tuning on JSONL prompt/response pairs", "reasonrl.cli.train:sft"),
    "eval": Command("evaluate a checkpoint or an OpenAI-compatible endpoint on a benchmark", "reasonrl.cli.evaluate:evaluate"),
    "report": Command("plots and a summary of a training run", "reasonrl.cli.train:report"),
    "data": Command("generate datasets", "reasonrl.cli.evaluate:DATASETS"),
    "distill-draft": Command("train a speculative-decoding draft head against a target, online",
                             "reasonrl.cli.train:distill_draft"),
    "raft": Command("reward-ranked fine-tuning: sample N, keep the best by outcome or PRM reward, SFT, repeat",
                    "reasonrl.cli.prm:raft"),
    "prm": Command("process reward models: label, train, judge, best-of-N", "reasonrl.cli.prm:COMMANDS"),
    "bench": Command("benchmarks (figures go to docs/benchmarks.md)", "reasonrl.cli.bench:WORKLOADS"),
    "train-image": Command("train the image models: tokenizer, text model, generators, SMARLI, layout GRPO",
                           "reasonrl.cli.image:TRAINERS"),
    "generate-image": Command("text to PNG images with a bit generator (AR or diffusion)",
                              "reasonrl.cli.image:generate_image"),
    "kernel-agent": Command("the GEAK agent: write Triton kernels with an LLM endpoint, sandboxed evaluation",
                            "reasonrl.cli.kernels:kernel_agent"),
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog):
        super().__init__(prog, max_help_position=36, width=110)


def parser_for(prog: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter)


def dispatch(prog: str, table: dict[str, Command], argv: list[str], description: str) -> int:
    """Run `argv[0]` of `table`, building only its parser; otherwise print the table."""
    if argv and argv[0] in table:
        command, name = table[argv[0]], f"{prog} {argv[0]}"
        target = command.resolve()
        if isinstance(target, dict):
            return dispatch(name, target, argv[1:], command.help)
        parser = parser_for(name, command.help)
        run = target(parser)
        return _run(run, parser.parse_args(argv[1:]), name)
    listing = "\n".join(f"  {name:<15} {c.help}" for name, c in table.items())
    top = parser_for(prog, f"{description}\n\ncommands:\n{listing}")
    if prog == "reasonrl":
        top.add_argument("--version", action="version", version=f"reasonrl {__version__}")
    top.add_argument("command", metavar="COMMAND", choices=list(table), help=f"one of: {', '.join(table)}")
    top.parse_args(argv)  # prints help, the version, or the error about an unknown command
    return 2


def _run(run, args: argparse.Namespace, prog: str) -> int:
    from reasonrl.config import ConfigError

    try:
        return int(run(args) or 0)
    except (OSError, ValueError, ConfigError) as exc:  # bad input (a path, a value): one clear line, not a traceback
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        from reasonrl.rl.update import TrainingDiverged

        if not isinstance(exc, TrainingDiverged):
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)  # (the demo and the benches train without run_training)
        return 1
    except KeyboardInterrupt as exc:  # Ctrl-C before a job's stop handler is in place, or a second one: stop now
        # a job that knows what it saved re-raises with that, and how to go on from it
        print(f"\n{prog}: interrupted; {str(exc) or 'nothing was saved since the last checkpoint'}", file=sys.stderr)
        return 128 + signal.SIGINT


def main(argv: list[str] | None = None) -> int:
    try:
        return dispatch("reasonrl", VERBS, sys.argv[1:] if argv is None else list(argv),
                        "RL post-training of reasoning models, with its own rollout engine.")
    except KeyboardInterrupt:  # Ctrl-C while a command's modules import or its flags are built: nothing ran yet
        print("\nreasonrl: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
