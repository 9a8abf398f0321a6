"""`reasonrl serve` and `reasonrl generate`: the engine behind a server or over prompts."""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING
from pathlib import Path

from reasonrl.cli.flags import add_flags, values
from reasonrl.progress import EVERY, check_interval


def add_model_flags(parser: argparse.ArgumentParser, with_path: bool = True) -> None:
    """--model (required), --device, --dtype, from the run config's model section."""
    from reasonrl.rl.config import ModelSection

    only = ["path", "device", "dtype"] if with_path else ["device", "dtype"]
    add_flags(parser, ModelSection, only=only, title="model", defaults={"path": MISSING})


def add_engine_flags(parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    from reasonrl.engine.config import EngineConfig

    add_flags(parser, EngineConfig, exclude=exclude, title="engine (EngineConfig)")


def model_options(args) -> dict:
    from reasonrl.rl.config import ModelSection

    return values(args, ModelSection)


def engine_options(args) -> dict:
    from reasonrl.engine.config import EngineConfig

    return values(args, EngineConfig)


def read_prompts(given: list[str] | None) -> list[str]:
    """The prompts given, else stdin's lines that are not blank (without their LF or CRLF); one that is
    not valid UTF-8 is an error naming it (it would fail in the tokenizer, after the model loaded)."""
    if not given and hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="surrogateescape")  # a bad byte reaches the check below, not a decode error
    prompts = given or [line.rstrip("\r\n") for line in sys.stdin if line.strip()]
    for i, prompt in enumerate(prompts, start=1):
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError:  # argv and stdin carry undecodable bytes as lone surrogates
            raise ValueError(f"prompt {i} is not valid UTF-8: {prompt!r}") from None
    return prompts


def progress_interval(text: str) -> float:
    """--progress-every: seconds, >= 0 (inf: no progress lines)."""
    try:
        return check_interval(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def serve(parser: argparse.ArgumentParser):
    from reasonrl.engine.server import ServeConfig

    add_model_flags(parser)
    add_flags(parser, ServeConfig, title="server (ServeConfig)")
    add_engine_flags(parser, exclude=("seed",))  # the server draws request seeds itself (ServeConfig.seed)

    def run(args) -> int:
        from reasonrl.engine import LLMEngine
        from reasonrl.engine.server import serve as run_server

        model, cfg = model_options(args), ServeConfig(**values(args, ServeConfig))
        cfg.served_model_name = cfg.served_model_name or Path(model["path"]).resolve().name
        engine = LLMEngine.from_pretrained(model["path"], model["device"], model["dtype"], **engine_options(args))
        run_server(engine, cfg)
        return 0

    return run


def generate(parser: argparse.ArgumentParser):
    from reasonrl.engine.sampling_params import SamplingParams

    parser.add_argument("prompt", nargs="*", help="prompts (default: one per line on stdin)")
    parser.add_argument("--chat", action=argparse.BooleanOptionalAction, default=False,
                        help="render each prompt as a user message with the checkpoint's chat template (the demo "
                             "policy and chat models need it) (default: False)")
    parser.add_argument("--progress-every", type=progress_interval, default=EVERY, metavar="SECONDS",
                        help="seconds between progress lines on stderr (`generate: 37/500 prompts done (12.3 s, ...)`; "
                             "none for a job quicker than that; 0: after every engine step, inf: none) "
                             f"(default: {EVERY:g})")
    add_model_flags(parser)
    add_flags(parser, SamplingParams, only=["temperature", "top_p", "top_k", "min_p", "max_tokens", "seed", "n", "stop"],
              title="sampling (SamplingParams)", defaults={"temperature": 0.0, "max_tokens": 128})
    add_engine_flags(parser, exclude=("seed",))

    def run(args) -> int:
        from reasonrl.engine import LLM

        model = model_options(args)
        params = SamplingParams(**values(args, SamplingParams))
        if not args.prompt and sys.stdin.isatty():
            print("reading prompts from stdin, one per line (end with Ctrl-D)", file=sys.stderr)
        prompts = read_prompts(args.prompt)
        if not prompts:  # (an option taking several values, such as --stop, also takes the prompts after it)
            raise ValueError("no prompts: give them as arguments (before --stop, or after --) or on stdin, one per line")
        llm = LLM(model["path"], device=model["device"], dtype=model["dtype"], **engine_options(args))
        if args.chat:
            outs = llm.chat([[{"role": "user", "content": p}] for p in prompts], params, progress=args.progress_every)
        else:
            outs = llm.generate(prompts, params, progress=args.progress_every)
        for p, out in zip(prompts, outs):
            texts = [o.text for o in out.outputs]
            print(f"### {p}\n" + "\n---\n".join(texts) + "\n")
        return 0

    return run
