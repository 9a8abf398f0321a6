"""`reasonrl <verb>`: each verb parses its flags and calls into the library."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_engine_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--device", help="cpu or cuda[:N] (default: cuda when available)")
    g.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="default: float32 on CPU, the checkpoint's on GPU")
    g.add_argument("--max-num-seqs", type=int, default=256, help="sequences decoded together at most")
    g.add_argument("--max-model-len", type=int, help="longest prompt + response (default: the model's)")
    g.add_argument("--max-num-batched-tokens", type=int, default=4096, help="tokens per step; longer prompts are chunked")
    g.add_argument("--kv-cache-memory", type=_bytes, help="KV cache size, e.g. 2GiB (default: 1GiB on CPU, 85%% of free GPU memory)")
    g.add_argument("--block-size", type=int, default=16)
    g.add_argument("--kv-format", default="dense", help="KV-cache storage: dense (see docs/engine.md for the others)")
    g.add_argument("--kv-option", action="append", default=[], metavar="NAME=VALUE",
                   help="a parameter of the KV format, e.g. --kv-option bits=4 (repeatable)")
    g.add_argument("--evict-budget", type=int, help="SnapKV token eviction: prompt tokens each KV head keeps per "
                                                   "layer besides the window (default: keep all; kv-format dense or spark)")
    g.add_argument("--evict-window", type=int, default=32, help="SnapKV: last prompt queries that choose what is kept")
    g.add_argument("--no-prefix-caching", action="store_true")
    g.add_argument("--seed", type=int, default=0, help="draws the seeds of requests that set none")
    g.add_argument("--draft", help="draft-head checkpoint (reasonrl distill-draft): speculative decoding")
    g.add_argument("--draft-top-k", type=int, default=8, help="draft tree: children per expanded node")
    g.add_argument("--draft-depth", type=int, default=6, help="draft tree: deepest draft token")
    g.add_argument("--draft-tokens", type=int, default=32, help="draft tree: draft tokens verified per step")
    g.add_argument("--draft-sampling", default="coupled", choices=["coupled", "residual"],
                   help="sampled requests: coupled (= plain sampling's tokens) or the residual tree rule")


def engine_kwargs(args) -> dict:
    return dict(max_num_seqs=args.max_num_seqs, max_model_len=args.max_model_len, block_size=args.block_size,
                max_num_batched_tokens=args.max_num_batched_tokens, kv_cache_memory=args.kv_cache_memory,
                kv_format=args.kv_format, kv_options=_overrides(args.kv_option, "--kv-option"),
                evict_budget=args.evict_budget, evict_window=args.evict_window,
                enable_prefix_caching=not args.no_prefix_caching, seed=args.seed, draft=args.draft,
                draft_top_k=args.draft_top_k, draft_depth=args.draft_depth, draft_tokens=args.draft_tokens,
                draft_sampling=args.draft_sampling)


def _bytes(text: str) -> int:
    units = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "b": 1, "": 1}
    t = text.strip().lower()
    num = t.rstrip("kmgib")
    try:
        return int(float(num) * units[t[len(num):]])
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 512MiB, 2GiB, 1000000)") from None


def cmd_serve(args) -> int:
    from reasonrl.engine import LLMEngine
    from reasonrl.engine.server import serve

    engine = LLMEngine.from_pretrained(args.model, args.device, args.dtype, **engine_kwargs(args))
    name = args.served_model_name or Path(args.model).name
    serve(engine, name, args.host, args.port)
    return 0


def cmd_generate(args) -> int:
    from reasonrl.engine import LLM, SamplingParams

    llm = LLM(args.model, device=args.device, dtype=args.dtype, **engine_kwargs(args))
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens, seed=args.seed_request)
    prompts = args.prompt or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if args.chat:
        outs = llm.chat([[{"role": "user", "content": p}] for p in prompts], params)
    else:
        outs = llm.generate(prompts, params)
    for p, out in zip(prompts, outs):
        print(f"### {p}\n{out.outputs[0].text}\n")
    return 0


def make_environment(spec: str):
    from reasonrl.envs.registry import load_environment

    return load_environment(spec if ":" in spec else spec + ":")


def _overrides(pairs: list[str], flag: str = "--set") -> dict:
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"{flag} expects name=value, got {pair!r}")
        out[key] = yaml.safe_load(value)
    return out


def cmd_train(args) -> int:
    from reasonrl.models import Tokenizer, load_model
    from reasonrl.rl.checkpoint import latest_checkpoint
    from reasonrl.rl.config import load_config
    from reasonrl.rl.report import write_report
    from reasonrl.rl.trainer import Trainer

    if args.config is None:  # the embedded default: the demo
        from reasonrl.demo.run import run_demo

        run_demo(overrides=_overrides(args.set))
        return 0
    cfg = load_config(args.config, _overrides(args.set))
    env = make_environment(cfg.env.name)
    policy = load_model(cfg.model.path, cfg.model.device, cfg.model.dtype, max_len=cfg.engine.max_model_len)
    trainer = Trainer(cfg, env, policy, Tokenizer.from_dir(cfg.model.path))
    trainer.train()
    report = write_report(cfg.train.run_dir)
    print(f"run directory: {cfg.train.run_dir}\nreport: {report}\ncheckpoint: {latest_checkpoint(cfg.train.run_dir)}")
    return 0


def cmd_sft(args) -> int:
    from reasonrl.rl.sft import SFTConfig, run_sft

    cfg = SFTConfig(epochs=args.epochs, lr=args.lr, samples_per_step=args.samples_per_step, chat=not args.no_chat,
                    max_tokens_per_microbatch=args.max_tokens_per_microbatch, max_len=args.max_len, seed=args.seed)
    out = run_sft(args.model, args.data, args.out, cfg, args.device)
    print(f"saved {out}")
    return 0


def cmd_distill_draft(args) -> int:
    from reasonrl.engine.spec.distill import DistillConfig, run_distill

    cfg = DistillConfig(steps=args.steps, prompts_per_step=args.prompts_per_step, max_new_tokens=args.max_new_tokens,
                        temperature=args.temperature, lr=args.lr, eval_every=args.eval_every, seed=args.seed)
    out = run_distill(args.target, make_environment(args.env), args.out, cfg, num_prompts=args.num_prompts,
                      eval_prompts=args.eval_prompts, init=args.init, device=args.device, dtype=args.dtype)
    print(f"saved {out}")
    return 0


def cmd_report(args) -> int:
    from reasonrl.rl.report import write_report

    print(write_report(args.run_dir))
    return 0


def cmd_eval(args) -> int:
    from reasonrl.eval import EndpointError, IncompleteEval, run_eval

    options = dict(base_url=args.base_url, n=args.n, k=args.k or (), temperature=args.temperature, top_p=args.top_p,
                   max_tokens=args.max_tokens, seed=args.seed, limit=args.limit, split=args.split,
                   data_seed=args.data_seed, chat=not args.completions, concurrency=args.concurrency,
                   retries=args.retries, request_timeout=args.request_timeout, api_key_env=args.api_key_env,
                   threshold=args.threshold, group_by=args.group_by, progress=not args.no_progress,
                   engine_kwargs={**engine_kwargs(args), "device": args.device, "dtype": args.dtype})
    try:
        summary = run_eval(args.benchmark, model=args.model, out=args.out, **options)
    except EndpointError as exc:
        print(f"reasonrl eval: {exc}", file=sys.stderr)
        return 1
    except IncompleteEval as exc:
        print(f"reasonrl eval: {exc} (rerun the same command to ask only for the missing samples)", file=sys.stderr)
        return 1
    print(Path(args.out) / "summary.md")
    print((Path(args.out) / "summary.md").read_text())
    return 0 if summary else 1


def cmd_data(args) -> int:
    from reasonrl.envs.ttt import export_jsonl

    written = export_jsonl(args.game, args.n, args.seed, args.out)
    note = f" (the whole {args.game} problem space has fewer)" if written < args.n else ""
    print(f"wrote {written} {args.game} problems to {args.out}{note}")
    return 0


def cmd_bench(args) -> int:
    from reasonrl.bench.common import write_json

    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)

    if args.workload == "engine":
        from reasonrl.bench.engine import bench_engine

        result = bench_engine(args.model, args.preset, args.num_prompts or 128, args.concurrency, args.median_tokens,
                              args.max_tokens or 384, device=args.device, dtype=args.dtype, skip_hf=args.skip_hf,
                              repeats=3 if args.repeats is None else args.repeats)
    elif args.workload == "ttt":
        from reasonrl.envs.ttt.bench import benchmark

        result = benchmark(n=args.num_prompts or 1000)
    elif args.workload == "math":
        from reasonrl.envs.math.bench import benchmark

        result = benchmark(n=args.num_prompts or 2000)
    elif args.workload == "spec":
        from reasonrl.bench.spec import bench_spec

        result = bench_spec(args.model, args.draft, args.env, args.num_prompts or 32, args.max_tokens or 96,
                            3 if args.repeats is None else args.repeats, args.device, args.dtype,
                            distill_steps=args.distill_steps, draft_top_k=args.draft_top_k, draft_depth=args.draft_depth,
                            draft_tokens=args.draft_tokens)
    elif args.workload == "april":
        from reasonrl.bench.april import bench_april

        result = bench_april(args.steps, args.prompts_per_step, args.samples_per_prompt, args.max_tokens or 256,
                             args.concurrency * 2, args.ratio, sft_steps=args.sft_steps, off_policy=args.off_policy,
                             repeats=2 if args.repeats is None else args.repeats)
    elif args.workload == "kv-decode":
        import torch

        from reasonrl.bench.kv_decode import DecodeBenchConfig, bench_kv_decode, format_table

        cfg = DecodeBenchConfig(context=args.context, batch=args.batch, iters=args.iters)
        result = bench_kv_decode(cfg, args.device, getattr(torch, args.dtype) if args.dtype else None)
        print(format_table(result))
    elif args.workload == "kv":
        from reasonrl.bench.kv import bench_kv, config_from_args, format_table

        result = bench_kv(args.model_dir, config_from_args(args.items, args.train_steps, args.seed, args.model_shape),
                          args.device)
        print(format_table(result))
    else:  # argparse restricts the choices
        raise AssertionError(args.workload)
    write_json(result, args.json)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reasonrl", description="RL post-training of reasoning models.")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True

    p = sub.add_parser("serve", help="OpenAI-compatible server (with an abort endpoint)")
    p.add_argument("--model", required=True, help="Hugging Face checkpoint directory")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name")
    add_engine_args(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("generate", help="generate from prompts given as arguments or on stdin")
    p.add_argument("--model", required=True)
    p.add_argument("prompt", nargs="*")
    p.add_argument("--chat", action="store_true", help="render each prompt as a user message with the chat template")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--seed-request", type=int)
    add_engine_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("train", help="RL post-training (GRPO/DAPO/GSPO with APRIL rollouts) from a YAML recipe")
    p.add_argument("config", nargs="?", help="run config YAML (see recipes/); none: the embedded demo")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sft", help="supervised warm start on JSONL prompt/response pairs")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help='JSONL with {"prompt": ..., "response": ...} per line')
    p.add_argument("--out", required=True, help="where to save the fine-tuned checkpoint")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--samples-per-step", type=int, default=32)
    p.add_argument("--max-tokens-per-microbatch", type=int, default=8192)
    p.add_argument("--max-len", type=int, default=2048)
    p.add_argument("--no-chat", action="store_true", help="concatenate prompt and response without the chat template")
    p.add_argument("--device")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_sft)

    p = sub.add_parser("eval", help="evaluate a checkpoint or an OpenAI-compatible endpoint on a benchmark")
    p.add_argument("benchmark", help="environment spec: ttt:oTTT, ttt:all, math:FILE.jsonl, jsonl:FILE?..., sums:")
    p.add_argument("--model", required=True, help="checkpoint directory, or the model name an endpoint serves")
    p.add_argument("--out", required=True, help="run directory (samples.jsonl, summary.json, summary.md); resumable")
    p.add_argument("--base-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (default: local engine)")
    p.add_argument("--n", type=int, default=1, help="samples per problem")
    p.add_argument("--k", type=int, nargs="+", help="pass@k to report (default: 1 and n)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-tokens", type=int, default=1024)
    p.add_argument("--limit", type=int, help="problems to use")
    p.add_argument("--split", default="eval", help="generated environments: train | eval (| published for TTT)")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--completions", action="store_true", help="use /completions with plain text instead of chat")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight to an endpoint")
    p.add_argument("--retries", type=int, default=5)
    p.add_argument("--request-timeout", type=float, default=3600.0)
    p.add_argument("--api-key-env", help="environment variable holding the API key (default: OPENAI_API_KEY if set)")
    p.add_argument("--threshold", type=float, default=1.0, help="a sample is correct when its reward >= this")
    p.add_argument("--group-by", nargs="+", help="metadata keys for subset tables (default: chosen automatically)")
    p.add_argument("--no-progress", action="store_true")
    add_engine_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("data", help="generate datasets (TTT-Bench problems)")
    p.add_argument("dataset", choices=["ttt"])
    p.add_argument("--game", required=True, choices=["oTTT", "dTTT", "cTTT", "sTTT"])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="JSONL file to write")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("distill-draft", help="train a speculative-decoding draft head against a target, online")
    p.add_argument("target", help="target checkpoint directory")
    p.add_argument("--out", required=True, help="where to save the draft (draft_config.json, draft.safetensors, log)")
    p.add_argument("--env", default="sums:", help="environment whose prompts the target answers (e.g. math:FILE.jsonl)")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--prompts-per-step", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=96, help="length of the target's training responses")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the training responses")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-every", type=int, default=100, help="steps between held-out accepted-length checks")
    p.add_argument("--num-prompts", type=int, default=2048, help="training prompts drawn from the environment")
    p.add_argument("--eval-prompts", type=int, default=32, help="held-out prompts (the environment's eval split)")
    p.add_argument("--init", help="a draft checkpoint to continue from")
    p.add_argument("--device")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_distill_draft)

    p = sub.add_parser("report", help="plots and a summary of a training run")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("bench", help="benchmarks; figures go to docs/benchmarks.md")
    p.add_argument("workload", choices=["engine", "april", "spec", "kv", "kv-decode", "ttt", "math"])
    p.add_argument("--json", help="also write the result to this file")
    p.add_argument("--threads", type=int, help="CPU: torch intra-op threads (default: torch's, one per core); the "
                                               "device field of the result records it")
    p.add_argument("--model", help="checkpoint directory (default: a random checkpoint of --preset; spec: the demo policy)")
    p.add_argument("--draft", help="spec: draft checkpoint (default: the demo policy's shipped draft)")
    p.add_argument("--distill-steps", type=int, default=0, help="spec: distill a fresh draft for --model first")
    p.add_argument("--env", default="sums:", help="spec: environment whose held-out prompts are decoded")
    p.add_argument("--draft-top-k", type=int, default=8, help="spec: draft tree, children per expanded node")
    p.add_argument("--draft-depth", type=int, default=6, help="spec: draft tree, deepest draft token")
    p.add_argument("--draft-tokens", type=int, default=32, help="spec: draft tree, draft tokens verified per step")
    p.add_argument("--preset", default="20m", choices=["tiny", "20m", "qwen2.5-0.5b"])
    p.add_argument("--num-prompts", type=int,
                   help="engine: prompts (128); spec: prompts (32); ttt: problems per game (1000); math: judgements (2000)")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--median-tokens", type=int, default=48)
    p.add_argument("--max-tokens", type=int, help="response cap (engine: 384, april: 256, spec: 96)")
    p.add_argument("--device")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--skip-hf", action="store_true", help="engine: no transformers comparison")
    p.add_argument("--repeats", type=int, help="runs per arm, interleaved; medians reported (engine: 3, april: 2, spec: 3)")
    p.add_argument("--steps", type=int, default=16, help="april: RL steps per arm")
    p.add_argument("--prompts-per-step", type=int, default=8, help="april")
    p.add_argument("--samples-per-prompt", type=int, default=8, help="april")
    p.add_argument("--ratio", type=float, default=2.0, help="april: over-provisioning of the APRIL arm")
    p.add_argument("--sft-steps", type=int, default=120, help="april: warm-up of the heavy-tailed policy")
    p.add_argument("--off-policy", default="tis", choices=["none", "mask", "tis", "decoupled"],
                   help="april: loss.off_policy of both arms (only APRIL has recycled tokens)")
    p.add_argument("--model-dir", help="kv: the trained recall model's directory, reused when its settings match "
                                       "(default: ~/.cache/reasonrl/bench_kv/SHAPE)")
    p.add_argument("--model-shape", default="8x64", choices=["8x64", "32x128"],
                   help="kv: KV heads x head dim of the recall model: 8x64 (195-token prompts, ~9 min training on "
                        "CPU) or 32x128, Llama-2-7B's KV shape (99-token prompts, ~47 min)")
    p.add_argument("--items", type=int, help="kv: held-out recall prompts per arm (300)")
    p.add_argument("--context", type=int, default=32768, help="kv-decode: tokens in each sequence's cache")
    p.add_argument("--batch", type=int, default=8, help="kv-decode: sequences decoded together")
    p.add_argument("--iters", type=int, default=20, help="kv-decode: timed decode steps (median reported)")
    p.add_argument("--train-steps", type=int, help="kv: training steps of the recall model (800)")
    p.add_argument("--seed", type=int, default=0, help="kv: seed of the items and the training")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError) as exc:  # bad input: one clear line, not a traceback
        print(f"reasonrl {args.verb}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
