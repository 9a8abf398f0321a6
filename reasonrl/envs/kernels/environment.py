"""`KernelEnvironment`: the kernel tasks behind the Environment interface, for `reasonrl train` and
`reasonrl eval`.

A prompt is a task's instruction and signature under a system prompt that fixes the answer's
format (prompt.py). The reward comes from the evaluator, correctness first:

    0                       no code, or code that does not pass (call_credit when it at least ran)
    1                       passes every test case (the CPU's answer: correctness only)
    1 + speedup_weight * b  on a GPU, b = clip(log2(speedup), 0, log2(speedup_cap)) / log2(speedup_cap)

so a threshold of 1.0 counts solved tasks. It never raises and never hangs: every candidate runs
in the evaluator's sandbox under a wall-clock limit, and a failure of the evaluator itself scores
0 (and is logged). `rewards` judges a batch on all workers at once; `metrics` reads the
verdicts it kept: call and execution accuracy, statuses, accuracy per family (`accuracy/<family>`),
and on a GPU the speedup summaries.
"""

from __future__ import annotations

import hashlib
import logging
import math
import zlib
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

from reasonrl.config import finite_numbers
from ..base import Environment, Prompt
from .evaluate import EvaluatorConfig, KernelEvaluator, SandboxLimits, Verdict
from .evaluate.timing import KernelResult, aggregate
from .evaluate.verdict import UNSETTLED
from .prompt import SYSTEM_PROMPT, extract_code, messages

log = logging.getLogger(__name__)
SPLITS = ("train", "eval", "all")
KEPT_VERDICTS = 20_000


@dataclass(frozen=True)
class KernelRewardConfig:
    call_credit: float = 0.0
    """Reward for code that runs on every case but is wrong (0: correctness or nothing)."""
    speedup_weight: float = 0.5
    """GPU only: the most a speedup adds on top of 1.0 for a correct kernel."""
    speedup_cap: float = 4.0
    """GPU only: the speedup at which that bonus is full."""
    holdout: float = 0.25
    """Share of tasks in the eval split (chosen by a hash of the task id, stable across runs)."""

    def __post_init__(self):
        finite_numbers(self, above={"speedup_cap": 1}, at_least={"call_credit": 0, "speedup_weight": 0, "holdout": 0},
                       prefix="kernel reward: ")
        for name in ("call_credit", "holdout"):
            if getattr(self, name) >= 1:
                raise ValueError(f"kernel reward: {name} must be below 1, got {getattr(self, name)!r}")


class KernelEnvironment(Environment):
    name = "kernels"

    def __init__(self, tasks: Sequence, evaluator: KernelEvaluator | None = None,
                 reward: KernelRewardConfig | None = None, system_prompt: str | None = SYSTEM_PROMPT,
                 evaluator_config: EvaluatorConfig | None = None, limits: SandboxLimits | None = None):
        if not tasks:
            raise ValueError("kernels: no tasks")
        self.tasks = {t.id: t for t in tasks}
        self.reward_config = reward or KernelRewardConfig()
        self.system_prompt = system_prompt
        self._own_evaluator = evaluator is None
        self._evaluator = evaluator
        self._evaluator_args = (evaluator_config, limits)
        self._verdicts: OrderedDict[tuple[str, str], Verdict] = OrderedDict()

    @property
    def evaluator(self) -> KernelEvaluator:
        if self._evaluator is None:  # started on first use: listing prompts needs no worker
            self._evaluator = KernelEvaluator(*self._evaluator_args)
        return self._evaluator

    def prompts(self, n: int | None = None, seed: int = 0, split: str = "train") -> list[Prompt]:
        if split not in SPLITS:
            raise ValueError(f"kernels: split must be one of {', '.join(SPLITS)}, got {split!r}")
        items = [self._prompt(t) for t in self.tasks.values() if split == "all" or self._split(t.id) == split]
        if not items:
            raise ValueError(f"kernels: no tasks in split {split!r} (holdout {self.reward_config.holdout})")
        from ..math.environment import select

        return select(items, n, seed)

    def _split(self, task_id: str) -> str:
        return "eval" if zlib.crc32(task_id.encode()) % 1000 < 1000 * self.reward_config.holdout else "train"

    def _prompt(self, task) -> Prompt:
        return Prompt(id=task.id, messages=messages(task, self.system_prompt), answer=task.id,
                      metadata={"family": task.family, "level": task.level, "cpu": bool(task.cpu)})

    def score(self, prompt: Prompt, response: str) -> float:
        return self.rewards([prompt], [response])[0]

    def rewards(self, prompts: Sequence[Prompt], responses: Sequence[Any]) -> list[float]:
        try:
            verdicts = self.judge(prompts, responses)
        except Exception as exc:  # the evaluator itself failed (not the model's doing): log, score 0
            log.error("kernel evaluator failed on a batch of %d: %r", len(prompts), exc)
            return [0.0] * len(prompts)
        return [self.reward_of(v) for v in verdicts]

    def judge(self, prompts: Sequence[Prompt], responses: Sequence[Any]) -> list[Verdict]:
        """A verdict per response, kept for `metrics` (the same response is not judged twice, unless its
        verdict was the machine's failure, `sandbox_error` or `not_judged`: that one is judged again)."""
        keys = [(p.id, _digest(r)) for p, r in zip(prompts, responses, strict=True)]
        todo = {}
        for key, prompt, response in zip(keys, prompts, responses):
            task = self.tasks.get(prompt.answer)
            if task is None:
                self._remember(key, Verdict(str(prompt.id), "no_code", f"not a task of this environment: {prompt.answer!r}"))
            elif key not in self._verdicts or self._verdicts[key].status in UNSETTLED:
                todo[key] = (task, extract_code(response, task.entry))
        if todo:
            for key, verdict in zip(todo, self.evaluator.evaluate_many(list(todo.values()))):
                self._remember(key, verdict)
        return [self._verdicts[k] for k in keys]

    def _remember(self, key: tuple[str, str], verdict: Verdict) -> None:
        self._verdicts[key] = verdict
        while len(self._verdicts) > KEPT_VERDICTS:
            self._verdicts.popitem(last=False)

    def reward_of(self, verdict: Verdict) -> float:
        cfg = self.reward_config
        if not verdict.exec_ok:
            return cfg.call_credit if verdict.call_ok else 0.0
        if verdict.speedup is None or not verdict.speedup > 0:  # not timed (or NaN): correctness only
            return 1.0
        bonus = min(max(math.log2(verdict.speedup), 0.0), math.log2(cfg.speedup_cap)) / math.log2(cfg.speedup_cap)
        return 1.0 + cfg.speedup_weight * bonus

    def extract(self, prompt: Prompt, response: str) -> str | None:
        task = self.tasks.get(prompt.answer)
        return extract_code(response, task.entry if task else "")

    def metrics(self, prompts: Sequence[Prompt], responses: Sequence[Any], rewards: Sequence[float]
                ) -> dict[str, Any]:
        out: dict[str, Any] = dict(super().metrics(prompts, responses, rewards))
        for family in sorted({str(p.metadata.get("family")) for p in prompts}):  # `reasonrl report` tables these
            mine = [r for p, r in zip(prompts, rewards) if str(p.metadata.get("family")) == family]
            out[f"accuracy/{family}"] = sum(r >= 1.0 for r in mine) / len(mine)  # solved: 1.0 and above
        verdicts = [self._verdicts.get((p.id, _digest(r))) for p, r in zip(prompts, responses)]
        known = [v for v in verdicts if v is not None]
        if not known:
            return out
        out["call_accuracy"] = sum(v.call_ok for v in known) / len(known)
        out["exec_accuracy"] = sum(v.exec_ok for v in known) / len(known)
        out["statuses"] = dict(Counter(v.status for v in known).most_common())
        speed = aggregate([KernelResult(v.task_id, v.exec_ok, v.speedup, v.expert_speedup) for v in known])
        if speed.get("timed"):
            out["speedup"] = speed
        return out

    def close(self) -> None:
        if self._own_evaluator and self._evaluator is not None:
            self._evaluator.close()
            self._evaluator = None


def _digest(response: Any) -> str:
    text = response if isinstance(response, str) else repr(type(response))
    return hashlib.blake2b(text.encode(errors="replace"), digest_size=12).hexdigest()
