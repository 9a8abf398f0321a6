"""`reasonrl bench WORKLOAD`: one subcommand per workload, each with only its own flags.

Every workload has a config dataclass next to its code; its flags come from it. Common to all:
`--json FILE` and `--threads N` (`BenchOptions`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from reasonrl.cli import Command
from reasonrl.cli.flags import add_flags, values


@dataclass
class BenchOptions:
    json: str | None = None
    """Also write the result to this JSON file (it is printed either way)."""
    threads: int | None = None
    """CPU: torch's intra-op threads (default: torch's, one per core); the result's device field names the count."""

    def __post_init__(self):
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {self.threads}")


WORKLOADS = {
    "engine": Command("engine vs transformers generate on a heavy-tailed workload; roofline and FLOP fractions",
                      "reasonrl.cli.bench:engine"),
    "april": Command("APRIL vs synchronous rollout on one GRPO workload", "reasonrl.cli.bench:april"),
    "spec": Command("speculative vs plain decoding: accepted length, speedup, costs", "reasonrl.cli.bench:spec"),
    "kv": Command("KV-cache formats: recall accuracy against bytes per token", "reasonrl.cli.bench:kv"),
    "kv-decode": Command("one decode step's attention at long context per KV format", "reasonrl.cli.bench:kv_decode"),
    "ttt": Command("TTT-Bench problem spaces, generator and verifier throughput", "reasonrl.cli.bench:ttt"),
    "math": Command("math verifier judgements per second, with hanging items", "reasonrl.cli.bench:math"),
    "serve": Command("server throughput and latency, clean load against 10% bad requests", "reasonrl.cli.bench:serve"),
    "shapes-detector": Command("the shapes world's oracle detector: recall, attributes, speed",
                               "reasonrl.cli.bench:shapes_detector"),
    "kernels": Command("kernel evaluator: verdicts per minute, sandboxed and parallel vs serial; GPU speedups",
                       "reasonrl.cli.bench:kernels"),
}


def workload(parser: argparse.ArgumentParser, config_cls: type, measure) -> callable:
    """Flags of `config_cls` and the common options; the runner calls `measure(config)`."""
    add_flags(parser, config_cls, title="workload")
    add_flags(parser, BenchOptions, title="output")

    def run(args) -> int:
        from reasonrl.bench.common import write_json

        options = BenchOptions(**values(args, BenchOptions))
        if options.threads is not None:
            import torch

            torch.set_num_threads(options.threads)
        write_json(measure(config_cls(**values(args, config_cls))), options.json)
        return 0

    return run


def engine(parser):
    from reasonrl.bench.engine import EngineBenchConfig, bench_engine

    return workload(parser, EngineBenchConfig, bench_engine)


def april(parser):
    from reasonrl.bench.april import AprilBenchConfig, bench_april

    return workload(parser, AprilBenchConfig, bench_april)


def spec(parser):
    from reasonrl.bench.spec import SpecBenchConfig, bench_spec

    return workload(parser, SpecBenchConfig, bench_spec)


def kv(parser):
    from reasonrl.bench.kv import KVBenchJob, bench_kv, format_table

    def measure(job: KVBenchJob):
        rows = bench_kv(job.model_dir, job.config(), job.device)
        print(format_table(rows))
        return rows

    return workload(parser, KVBenchJob, measure)


def kv_decode(parser):
    from reasonrl.bench.kv_decode import DecodeBenchConfig, bench_kv_decode, format_table

    def measure(cfg: DecodeBenchConfig):
        rows = bench_kv_decode(cfg)
        print(format_table(rows))
        return rows

    return workload(parser, DecodeBenchConfig, measure)


def ttt(parser):
    from reasonrl.envs.ttt.bench import TTTBenchConfig, benchmark

    return workload(parser, TTTBenchConfig, benchmark)


def math(parser):
    from reasonrl.envs.math.bench import MathBenchConfig, benchmark

    return workload(parser, MathBenchConfig, benchmark)


def serve(parser):
    from reasonrl.bench.serve import ServeBenchConfig, bench_serve

    return workload(parser, ServeBenchConfig, bench_serve)


def shapes_detector(parser):
    from reasonrl.vision.world import DetectorBenchConfig, bench_detector

    return workload(parser, DetectorBenchConfig, bench_detector)


def kernels(parser):
    from reasonrl.bench.kernels import KernelBenchConfig, bench_kernels

    return workload(parser, KernelBenchConfig, bench_kernels)
