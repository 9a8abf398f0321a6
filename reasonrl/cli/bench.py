"""`reasonrl bench WORKLOAD`: one subcommand per workload, each with only its own flags.

Every workload has a config dataclass next to its code; its flags come from it. Common to all:
`--json FILE` and `--threads N` (`BenchOptions`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from reasonrl.cli import Command, resolve
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
    "vlm": Command("engine vs transformers generate on image+text prompts; vision-tower images/s",
                   "reasonrl.cli.bench:vlm"),
    "april": Command("APRIL vs synchronous rollout on one GRPO workload", "reasonrl.cli.bench:april"),
    "scale": Command("Ray scale-out: rollout tokens/s with 1 and 2 engine actors, time per weight sync",
                     "reasonrl.cli.bench:scale"),
    "spec": Command("speculative vs plain decoding: accepted length, speedup, costs", "reasonrl.cli.bench:spec"),
    "kv": Command("KV-cache formats: recall accuracy against bytes per token", "reasonrl.cli.bench:kv"),
    "kv-decode": Command("one decode step's attention at long context per KV format", "reasonrl.cli.bench:kv_decode"),
    "ttt": Command("TTT-Bench problem spaces, generator and verifier throughput", "reasonrl.cli.bench:ttt"),
    "math": Command("math verifier judgements per second, with hanging items", "reasonrl.cli.bench:math"),
    "serve": Command("server throughput and latency, clean load against 10% bad requests", "reasonrl.cli.bench:serve"),
    "prm": Command("PRM steps scored per second: batched (all steps per pass) against one pass per prefix",
                   "reasonrl.cli.bench:prm"),
    "sand-mini": Command("SAND-Math's Difficulty Hiking in miniature (sums): base vs hiked SFT data, held-out accuracy",
                         "reasonrl.cli.bench:sand_mini"),
    "shapes-detector": Command("the shapes world's oracle detector: recall, attributes, speed",
                               "reasonrl.cli.bench:shapes_detector"),
    "image-tokenizer": Command("binary vs one-hot VQ tokenizers: PSNR against bits, code usage, 2x decoding",
                               "reasonrl.cli.bench:image_tokenizer"),
    "image-gen": Command("AR vs diffusion bit generators: GenEval-lite with the oracle detector",
                         "reasonrl.cli.bench:image_gen"),
    "smarli": Command("SMARLI models (mask ablations, before/after layout GRPO): layout metrics",
                      "reasonrl.cli.bench:smarli"),
    "imagedoctor": Command("ImageDoctor-mini judge: SFT, no-task-token ablation, GRPO; PLCC/SRCC, heatmap CC/IoU",
                           "reasonrl.cli.bench:imagedoctor"),
    "structured": Command("structured outputs: constrained vs free decode tokens/s, the grammar mask's cost per step",
                          "reasonrl.cli.bench:structured"),
    "lvr": Command("LVR on shapes detail questions: SFT with and without latents, GRPO, causality and steps figures",
                   "reasonrl.cli.bench:lvr"),
    "gpu": Command("every open GPU figure in one run (engine, kv-decode kernels, spec, APRIL, the kernel "
                   "evaluator): one JSON, a markdown table",
                   "reasonrl.cli.bench:gpu"),
    "kernels": Command("kernel evaluator: verdicts per minute, sandboxed and parallel vs serial; GPU speedups",
                       "reasonrl.cli.bench:kernels"),
}


def workload(config: str, measure: str, table: str | None = None):
    """The builder of a workload's subcommand: flags from the config dataclass `config` and the
    common options; it runs `measure(config)` and prints `table(result)` if given (all three
    "module:name", imported only when the workload runs)."""
    def build(parser: argparse.ArgumentParser):
        config_cls = resolve(config)
        add_flags(parser, config_cls, title="workload")
        add_flags(parser, BenchOptions, title="output")

        def run(args) -> int:
            from reasonrl.bench.common import write_json

            options = BenchOptions(**values(args, BenchOptions))
            if options.threads is not None:
                import torch

                torch.set_num_threads(options.threads)
            result = resolve(measure)(config_cls(**values(args, config_cls)))
            write_json(result, options.json)  # first: a table that fails to format loses nothing
            if table is not None:
                print(resolve(table)(result))
            return 0

        return run

    return build


engine = workload("reasonrl.bench.engine:EngineBenchConfig", "reasonrl.bench.engine:bench_engine")
vlm = workload("reasonrl.bench.vlm:VLMBenchConfig", "reasonrl.bench.vlm:bench_vlm")
april = workload("reasonrl.bench.april:AprilBenchConfig", "reasonrl.bench.april:bench_april")
scale = workload("reasonrl.bench.scale:ScaleBenchConfig", "reasonrl.bench.scale:bench_scale")
spec = workload("reasonrl.bench.spec:SpecBenchConfig", "reasonrl.bench.spec:bench_spec")
kv = workload("reasonrl.bench.kv:KVBenchJob", "reasonrl.bench.kv:run_job", "reasonrl.bench.kv:format_table")
kv_decode = workload("reasonrl.bench.kv_decode:DecodeBenchConfig", "reasonrl.bench.kv_decode:bench_kv_decode",
                     "reasonrl.bench.kv_decode:format_table")
ttt = workload("reasonrl.envs.ttt.bench:TTTBenchConfig", "reasonrl.envs.ttt.bench:benchmark")
math = workload("reasonrl.envs.math.bench:MathBenchConfig", "reasonrl.envs.math.bench:benchmark")
serve = workload("reasonrl.bench.serve:ServeBenchConfig", "reasonrl.bench.serve:bench_serve")
prm = workload("reasonrl.bench.prm:PRMBenchConfig", "reasonrl.bench.prm:bench_prm")
structured = workload("reasonrl.bench.structured:StructuredBenchConfig", "reasonrl.bench.structured:bench_structured")
shapes_detector = workload("reasonrl.vision.world:DetectorBenchConfig", "reasonrl.vision.world:bench_detector")
image_tokenizer = workload("reasonrl.vision.binary.bench:TokenizerBenchConfig",
                           "reasonrl.vision.binary.bench:bench_tokenizers", "reasonrl.vision.binary.bench:format_rows")
image_gen = workload("reasonrl.vision.binary.bench:GenBenchConfig", "reasonrl.vision.binary.bench:bench_generators",
                     "reasonrl.vision.binary.bench:format_rows")
smarli = workload("reasonrl.vision.smarli.bench:SmarliBenchConfig", "reasonrl.vision.smarli.bench:bench_smarli",
                  "reasonrl.vision.binary.bench:format_rows")
lvr = workload("reasonrl.vision.lvr.experiment:LVRExperimentConfig", "reasonrl.vision.lvr.experiment:run_experiment",
               "reasonrl.vision.lvr.experiment:markdown")
imagedoctor = workload("reasonrl.reward.imagedoctor.experiment:JudgeBenchConfig",
                       "reasonrl.reward.imagedoctor.experiment:bench_judge",
                       "reasonrl.reward.imagedoctor.experiment:format_rows")
gpu = workload("reasonrl.bench.gpu:GpuBenchConfig", "reasonrl.bench.gpu:bench_gpu", "reasonrl.bench.gpu:format_table")
kernels = workload("reasonrl.bench.kernels:KernelBenchConfig", "reasonrl.bench.kernels:bench_kernels")
sand_mini = workload("reasonrl.data.sand.mini.experiment:MiniConfig", "reasonrl.data.sand.mini.experiment:run_miniature",
                     "reasonrl.data.sand.mini.experiment:markdown")
