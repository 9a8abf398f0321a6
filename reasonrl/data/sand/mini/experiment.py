"""The miniature reproduction of Difficulty Hiking, on `sums`: `reasonrl bench sand-mini`.

(Also `python -m reasonrl.data.sand.mini.experiment`, with the same flags.)

SAND-Math's claim (arXiv 2507.20527): at equal data, a Difficulty-Hiked set trains a better model
on hard problems (AIME25 46.38% -> 49.23%) than the base set. In miniature, with what can run
on a CPU here:

1. Held-out splits: `base` (2-6 terms) and `hard` (7-10 terms), 300 problems each (splits.py).
   They are also the pipeline's evaluation sets: decontamination keeps them out of the data.
2. The pipeline (`run_sand`, recipes/sand-sums.yaml) against the sums teacher behind a real
   OpenAI-compatible endpoint (teacher.py: a program playing the LLM; see its docstring), with the
   demo policy (reasonrl/demo/policy) as the reference policy of the empirical difficulty.
3. The base set and the hiked set, cut to the same size (the first M examples of each).
4. The same starting policy (the demo policy) fine-tuned on each (`reasonrl sft`'s run code), with
   the same settings, for several seeds.
5. Greedy accuracy of the start and of each fine-tuned policy on both held-out splits.

Targets: hiking raises the empirical difficulty (mean over the accepted problems); the hiked set
gives higher hard-split accuracy at equal sample count without losing more than 2 points on the
base split (means over seeds). Everything lands in OUT/summary.json and OUT/summary.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from reasonrl.bench.common import device_name
from reasonrl.demo.policy import SHIPPED
from reasonrl.envs.base import Prompt
from reasonrl.envs.math import MathEnvironment
from reasonrl.eval import run_eval
from reasonrl.eval.store import jsonl_lines
from reasonrl.rl.config import read_yaml

from .. import from_dict, run_sand
from .endpoint import TeacherServer, create_teacher_app, known_problems
from .splits import write_splits
from .teacher import SumsTeacher


@dataclass
class MiniConfig:
    out: str = "runs/sand-mini"
    """Directory for the splits, the pipeline's run, the training sets, the fine-tuned policies and the summary."""
    recipe: str = "recipes/sand-sums.yaml"
    """The pipeline's recipe (its endpoint URLs and evaluation sets are replaced by the miniature's)."""
    candidates: int = 800
    """Problems the teacher is asked for (generate.problems)."""
    set_size: int = 300
    """SFT examples per arm (base, hiked): the first M of each set, M = min(set_size, both sets' sizes)."""
    eval_size: int = 300
    """Problems per held-out split (base: 2-6 terms, hard: 7-10 terms)."""
    seeds: int = 3
    """Fine-tuning seeds per arm."""
    epochs: float = 3.0
    """SFT epochs over each training set."""
    lr: float = 1e-3
    """SFT learning rate."""
    max_tokens: int = 96
    """Greedy response tokens at evaluation (10 terms take about 45)."""

    def __post_init__(self):
        for name in ("candidates", "set_size", "eval_size", "seeds", "max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not (self.epochs > 0 and self.lr > 0):
            raise ValueError(f"epochs and lr must be > 0, got {self.epochs} and {self.lr}")


def run_miniature(cfg: MiniConfig) -> dict:
    out, start = Path(cfg.out), time.perf_counter()
    splits = write_splits(out / "splits", cfg.eval_size)
    pipeline = build_sets(cfg, out, [str(p) for p in splits.values()])
    sets = equal_sets(out, cfg.set_size)
    accuracy = {"start": evaluate(str(SHIPPED), splits, out / "eval" / "start", cfg.max_tokens)}
    for arm in ("base", "hiked"):
        for seed in range(cfg.seeds):
            model = fine_tune(sets[arm], out / f"sft-{arm}-{seed}", cfg, seed)
            accuracy[f"{arm}-{seed}"] = evaluate(str(model), splits, out / "eval" / f"{arm}-{seed}", cfg.max_tokens)
    summary = {"config": asdict(cfg), "set_size": len(read_jsonl(sets["base"])),
               "difficulty": pipeline["difficulty"], "pipeline": {k: pipeline[k] for k in ("accepted", "spent",
                                                                                          "accepted_per_call")},
               "accuracy": accuracy, "means": means(accuracy, cfg.seeds)}
    summary["targets"] = targets(summary)
    summary["wall_seconds"] = round(time.perf_counter() - start, 1)
    summary["device"] = device_name(torch.device("cpu"))  # everything here runs on the CPU
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(markdown(summary))
    return summary


def build_sets(cfg: MiniConfig, out: Path, eval_sets: list[str]) -> dict:
    """The pipeline's summary, after running it against the sums teacher's endpoint."""
    teacher = TeacherServer(create_teacher_app(SumsTeacher(known_problems=known_problems(eval_sets))))
    try:
        data = read_yaml(cfg.recipe)
        data["defaults"]["base_url"] = teacher.url
        data["decontaminate"].update(embed_base_url=teacher.url, eval_sets=eval_sets)
        data["generate"]["problems"] = cfg.candidates
        data["measure"]["model"] = str(SHIPPED)
        return run_sand(from_dict(data), out / "pipeline", overwrite=False)
    finally:
        teacher.stop()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in jsonl_lines(path) if line.strip()]


def equal_sets(out: Path, size: int) -> dict[str, Path]:
    """The first M examples of the base and the hiked SFT sets, M = min(size, both sets' sizes)."""
    rows = {arm: read_jsonl(out / "pipeline" / f"sft_{arm}.jsonl") for arm in ("base", "hiked")}
    m = min(size, *(len(r) for r in rows.values()))
    paths = {}
    for arm, examples in rows.items():
        paths[arm] = out / f"train_{arm}.jsonl"
        paths[arm].write_text("".join(json.dumps(r) + "\n" for r in examples[:m]))
    return paths


def fine_tune(data: Path, run_dir: Path, cfg: MiniConfig, seed: int) -> Path:
    from reasonrl.rl.sft import SFTConfig
    from reasonrl.rl.sft_run import SFTRun, run_sft
    from reasonrl.rl.train import RunControl

    run = SFTRun(model=str(SHIPPED), data=str(data), out=str(run_dir), save_every=10_000, device="cpu")
    sft = SFTConfig(epochs=cfg.epochs, lr=cfg.lr, samples_per_step=16, warmup_steps=5, max_len=512, seed=seed)
    if run_sft(run, sft, RunControl(), console=False) != 0:
        raise RuntimeError(f"fine-tuning into {run_dir} did not finish")
    return run_dir


def evaluate(model: str, splits: dict[str, Path], out: Path, max_tokens: int) -> dict[str, float]:
    """Greedy accuracy on each held-out split."""
    accuracy = {}
    for name, path in splits.items():
        prompts = [Prompt(r["id"], [{"role": "user", "content": r["problem"]}], answer=r["answer"]) for r in read_jsonl(path)]
        env = MathEnvironment(prompts, name=f"sums-{name}")
        try:
            summary = run_eval(env, model=model, out=out / name, n=1, temperature=0.0, max_tokens=max_tokens,
                               progress=False, engine_kwargs={"device": "cpu"})
        finally:
            env.close()
        accuracy[name] = summary["pass@1"]
    return accuracy


def means(accuracy: dict, seeds: int) -> dict[str, dict[str, float]]:
    out = {"start": accuracy["start"]}
    for arm in ("base", "hiked"):
        runs = [accuracy[f"{arm}-{s}"] for s in range(seeds)]
        out[arm] = {split: sum(r[split] for r in runs) / len(runs) for split in runs[0]}
    return out


def targets(summary: dict) -> dict[str, bool]:
    d, m = summary["difficulty"], summary["means"]
    return {"hiking raises empirical difficulty": (d["hiked"]["empirical_difficulty_mean"] or 0)
            > (d["base"]["empirical_difficulty_mean"] or 0),
            "hiked set: higher hard-split accuracy": m["hiked"]["hard"] > m["base"]["hard"],
            "hiked set: base split within 2 points": m["hiked"]["base"] >= m["base"]["base"] - 0.02}


def markdown(s: dict) -> str:
    d, m = s["difficulty"], s["means"]
    lines = ["# Difficulty Hiking in miniature (sums)", "",
             f"Training sets: {s['set_size']} examples each; {s['config']['seeds']} fine-tuning seeds per arm; "
             f"wall time {s['wall_seconds']:.0f} s on {s['device']}.", "",
             "| set | problems | mean rating | mean empirical difficulty |", "|---|---|---|---|"]
    for label in ("base", "hiked", "hiked_sources"):
        lines.append(f"| {label} | {d[label]['problems']} | {_pct(d[label]['rating_mean'], 1, False)} | "
                     f"{_pct(d[label]['empirical_difficulty_mean'], 1, False)} |")
    lines += ["", "| policy | base split | hard split |", "|---|---|---|",
              f"| start (demo policy) | {_pct(m['start']['base'])} | {_pct(m['start']['hard'])} |"]
    for arm in ("base", "hiked"):
        runs = ", ".join(f"{100 * s['accuracy'][f'{arm}-{i}']['hard']:.1f}" for i in range(s["config"]["seeds"]))
        lines.append(f"| SFT on the {arm} set | {_pct(m[arm]['base'])} | {_pct(m[arm]['hard'])} (seeds: {runs}) |")
    lines += ["", "Targets:"] + [f"- {name}: {'met' if ok else 'NOT met'}" for name, ok in s["targets"].items()]
    return "\n".join(lines) + "\n"


def _pct(value, digits: int = 1, percent: bool = True) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.{digits}f}%" if percent else f"{value:.2f}"


def main(argv: list[str] | None = None) -> int:
    from reasonrl.cli.flags import add_flags, values

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_flags(parser, MiniConfig)
    summary = run_miniature(MiniConfig(**values(parser.parse_args(argv), MiniConfig)))
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
