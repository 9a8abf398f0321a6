"""Keeping a PRM in step with the policy it ranks: label what it ranked highest, fine-tune on it.

A PRM trained once on a fixed policy's solutions learns that policy's errors. When RAFT (or any
loop) fine-tunes the policy on what the PRM ranks highest, the policy drifts towards the errors the
PRM cannot see, and the PRM's picks get worse round after round (docs/benchmarks.md, "RAFT on a
lenient verifier": right 55% of the time in round 1, 36% by round 6). Each round, once its samples
are ranked and kept, `Refresh` labels the solutions the PRM ranked highest, step by step, with
Athena's weak/strong consistency (`labels.py`: Monte Carlo continuations from every step prefix by
two completers, a step kept where both agree), and fine-tunes the PRM on every round's labels so far.

Not in the papers: Athena-PRM trains its PRM once; RAFT's reward model is fixed. The choice of
which solutions to label (every prompt's best-ranked first, then every prompt's second, each tier by
score) is ours: the PRM's errors that cost are those among the solutions it would keep. The round's
selection is made before its samples are labelled, so a label never decides the round it was drawn
from; it ranks the next round's.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from reasonrl.engine.llm_engine import LLMEngine
from reasonrl.envs.base import Environment, Prompt
from reasonrl.reward.prm.completer import Completer, Cost, Request
from reasonrl.reward.prm.labels import label_quality, monte_carlo, solution_row
from reasonrl.reward.prm.scoring import PRMScorer
from reasonrl.reward.prm.train import PRMTrainConfig, train_prm


def top_ranked(requests: Sequence[Request], rewards: Sequence[float], count: int) -> list[tuple[Prompt, str]]:
    """Up to `count` (prompt, response) pairs: every prompt's best-ranked response, then every prompt's
    second, and so on, each tier by reward (rewards flat, prompt-major). A response cut at max_tokens
    (its last step a fragment), a duplicate of one already taken, or one the reward never ranked (-inf,
    rejected by the verifier in front of the PRM) is passed over."""
    tiers: list[list[tuple[float, Prompt, str]]] = []
    i = 0
    for r in requests:
        seen: set[str] = set()
        ranked = sorted(zip(rewards[i:i + len(r.texts)], range(len(r.texts))), key=lambda x: -x[0])
        for reward, j in ranked:
            if math.isfinite(reward) and r.ended[j] and r.texts[j] not in seen:
                if len(seen) == len(tiers):
                    tiers.append([])
                tiers[len(seen)].append((reward, r.prompt, r.texts[j]))
                seen.add(r.texts[j])
        i += len(r.texts)
    return [(p, text) for tier in tiers for _, p, text in sorted(tier, key=lambda x: -x[0])][:count]


@dataclass
class Refresh:
    scorer: PRMScorer
    """The PRM, fine-tuned in place (its reward reads it at call time)."""
    env: Environment
    """Judges the continuations: whether a step prefix leads to the answer."""
    weak: str
    """The weak completer's checkpoint."""
    strong: str | None
    """The strong completer's checkpoint; None: the policy that wrote the round (before it learns from it)."""
    solutions: int
    """Solutions labelled per round."""
    labels: str = "consistent"
    """consistent: weak/strong consistent Monte Carlo labels; exact: the environment's exact step labels,
    no continuation (a ceiling for measurement: only generated tasks have them)."""
    completions: int = 4
    """Continuations per step prefix, per completer."""
    epochs: float = 2.0
    """Passes over every round's labelled solutions so far, per round."""
    lr: float = 1e-3
    """Peak learning rate of the fine-tuning."""
    temperature: float = 1.0
    max_tokens: int = 128
    device: str | None = None
    seed: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    """Every round's labelled solutions (labels.py rows), checkpointed with the run."""

    def __call__(self, requests: Sequence[Request], rewards: Sequence[float], model, tokenizer, rnd: int
                 ) -> dict[str, Any]:
        """Label this round's top-ranked solutions and fine-tune the PRM; what it cost and found. `model`
        (with `tokenizer`): the policy that wrote them, the strong completer unless `strong` names one."""
        start, fmt = time.perf_counter(), self.scorer.cfg.steps
        rows = [solution_row(self.env, p, text, fmt, f"round{rnd}/{p.id}/{k}")
                for k, (p, text) in enumerate(top_ranked(requests, rewards, self.solutions))]
        out: dict[str, Any] = {"solutions": len(rows), "steps": sum(len(r["steps"]) for r in rows)}
        if not rows:  # every sample cut at max_tokens, or rejected by the verifier: the PRM stays as it is
            return {**out, "prm_loss": None, "not_trained": "no solution to label this round",
                    "seconds": time.perf_counter() - start}
        exact = all(r["exact"] is not None for r in rows)
        if exact:  # how well the PRM judged what it ranked highest, before it learns from it (not used to train)
            from reasonrl.reward.prm.run import judge

            try:
                out["judged_before"] = _brief(judge(self.scorer, rows))
            except ValueError:  # no solution with a step, or none the PRM reads whole
                pass
        if self.labels == "exact" and not exact:  # (RaftConfig refuses exact labels for an environment without them)
            raise ValueError(f"--refresh-labels exact: {type(self.env).__name__} gave no exact step labels")
        cost = Cost()
        for role, path in (("weak", self.weak), ("strong", self.strong)) if self.labels == "consistent" else ():
            completer = self._load(path) if path else Completer(LLMEngine(model, tokenizer), self.completions,
                                                                self.temperature, self.max_tokens)
            cost = cost.add(monte_carlo(completer, self.env, rows, fmt, role, self.seed * 1000 + rnd))
            del completer  # its KV cache goes before the next one allocates
        self.rows += rows
        out.update(completions=cost.completions, generated_tokens=cost.generated_tokens)
        if exact and self.labels == "consistent":
            out["label_accuracy"] = label_quality(rows, "consistent")["accuracy"]
        try:
            history = train_prm(self.scorer, self.rows, PRMTrainConfig(
                labels=self.labels, epochs=self.epochs, lr=self.lr, samples_per_step=16, warmup_steps=2,
                seed=self.seed * 1000 + rnd))
            out["prm_loss"] = history["loss"][-1]
        except ValueError as exc:  # no step the completers agree on yet: the PRM stays as it was
            out["prm_loss"] = None
            out["not_trained"] = str(exc)
        self.scorer.prm.zero_grad(set_to_none=True)  # (the last step's gradients, until the next refresh)
        out["seconds"] = time.perf_counter() - start
        return out

    def _load(self, path: str) -> Completer:
        return Completer.load(path, self.completions, self.temperature, self.max_tokens, device=self.device)


def _brief(metrics: dict[str, Any]) -> dict[str, Any]:
    keys = ("f1", "erroneous_accuracy", "correct_accuracy", "step_auc", "solutions", "erroneous")
    return {k: metrics[k] for k in keys}
