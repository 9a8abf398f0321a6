"""`reasonrl bench prm`: steps scored per second, every step of many solutions per forward pass
against the naive way (one forward per step prefix, reading its last position), in one run.

Both read the same hidden state for a step (the model is causal and the separator follows the
step either way), so their scores must agree: the largest difference is reported beside the speed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from reasonrl.bench.common import device_name, sync
from reasonrl.models.loader import resolve_device


@dataclass
class PRMBenchConfig:
    prm: str | None = None
    """A PRM directory (default: a fresh head on the demo policy; speed does not depend on the weights)."""
    solutions: int = 256
    """Worked `sums` solutions to score (one step per running total)."""
    naive_solutions: int = 32
    """Of those, how many the naive way scores (it is slow); its rate is per step all the same."""
    max_tokens_per_batch: int = 16384
    """Padded tokens per batched forward."""
    device: str | None = None
    """cpu, cuda or cuda:N (default: cuda when available)."""


def _scorer(cfg: PRMBenchConfig):
    from reasonrl.demo.policy import SHIPPED
    from reasonrl.reward.prm.model import PRMConfig, load_prm
    from reasonrl.reward.prm.run import new_prm
    from reasonrl.reward.prm.scoring import PRMScorer
    from reasonrl.reward.prm.steps import StepFormat

    if cfg.prm is None:
        scorer = new_prm(str(SHIPPED), PRMConfig(steps=StepFormat(delimiter=" ")), cfg.device)
        scorer.max_tokens_per_batch = cfg.max_tokens_per_batch
        return scorer
    model, tokenizer = load_prm(cfg.prm, device=cfg.device)
    return PRMScorer(model, tokenizer, cfg.max_tokens_per_batch)


def _naive(scorer, items) -> list[list[float]]:
    """One forward per step prefix: the prompt, steps 1..k, a separator; the last position's score."""
    out = []
    for prompt, steps in items:
        scores = []
        for k in range(1, len(steps) + 1):
            enc = scorer.encode(prompt, steps[:k])
            enc.positions = enc.positions[-1:]
            enc.spans = enc.spans and enc.spans[-1:]  # a confidence PRM's features: the last step's too
            scores += scorer.step_probs([enc])[0]
        out.append(scores)
    return out


def bench_prm(cfg: PRMBenchConfig) -> dict:
    from reasonrl.envs.sums import SumsEnvironment
    from reasonrl.reward.prm.steps import step_texts

    scorer, device = _scorer(cfg), resolve_device(cfg.device)
    rows = SumsEnvironment().traces(cfg.solutions, seed=1)
    items = [(r["prompt"], step_texts(r["response"], scorer.cfg.steps)) for r in rows]
    scorer.score_steps(items[:4])  # warm-up
    timed = {}
    for name, run, subset in (("batched", lambda xs: [s.scores for s in scorer.score_steps(xs)], items),
                              ("naive", lambda xs: _naive(scorer, xs), items[:cfg.naive_solutions])):
        sync(device)
        start = time.perf_counter()
        with torch.inference_mode():
            scores = run(subset)
        sync(device)
        timed[name] = (scores, time.perf_counter() - start, sum(len(s) for _, s in subset))
    batched, naive = timed["batched"][0][:cfg.naive_solutions], timed["naive"][0]
    rate = {k: steps / seconds for k, (_, seconds, steps) in timed.items()}
    return {"device": device_name(device), "solutions": cfg.solutions, "steps": timed["batched"][2],
            "batched_steps_per_s": rate["batched"], "naive_steps_per_s": rate["naive"],
            "speedup": rate["batched"] / rate["naive"],
            "max_score_difference": max(abs(a - b) for x, y in zip(batched, naive) for a, b in zip(x, y))}
