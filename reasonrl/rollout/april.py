"""APRIL: active partial rollouts (arXiv 2509.18521).

Each step launches ceil(N * over_provision) prompt groups of G samples, buffered partial groups
first. A group is done when all its samples finish. Once N groups are done, every other request is
aborted at once and the unfinished groups go to the buffer, whose partial samples are resumed
first next step: their tokens are re-prefilled, their behaviour log-probs and per-token policy
versions kept. Nothing is discarded.

Where this departs from the paper and from slime, its reference implementation:
- Aborts happen between two engine steps, synchronously (slime polls the server every 3 s).
- Every group that completed by the time the abort returns is trained on this step, even beyond
  N: slime silently drops the extra completed groups of the same wake-up. The step's batch may
  therefore hold a few more than N groups. `dropped_groups` counts groups lost by the
  bookkeeping itself (launched - done - filtered - buffered) and must stay 0.
- Dynamic sampling (DAPO) launches replacement groups for the ones it filters out, like slime,
  up to `max_groups_per_step`.
- The buffer is part of the checkpoint (`state_dict`).
- A sample whose request the engine failed alone (finish_reason "error": step isolation, e.g. out
  of memory in its step) is resubmitted at once from its tokens, up to `MAX_FAILURES` times,
  then the rollout raises; one failing during the abort is buffered like the others.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from reasonrl.engine.sampling_params import SamplingParams
from reasonrl.engine.sequence import CompletionOutput
from reasonrl.models.chat import ModelInput, multimodal, token_ids
from reasonrl.envs.base import Prompt
from reasonrl.rollout.backend import RolloutBackend
from reasonrl.rollout.buffer import Group, PartialBuffer
from reasonrl.rollout.config import RolloutConfig
from reasonrl.rollout.sample import Sample, Status

STATUS = {"stop": Status.COMPLETED, "length": Status.TRUNCATED, "abort": Status.ABORTED, "error": Status.ABORTED}

MAX_FAILURES = 3
"""Times one sample's request may fail in the engine (finish_reason "error") before the rollout
gives up: a transient failure (memory) is retried, one that recurs is a bug to surface."""

log = logging.getLogger(__name__)


@dataclass
class RolloutStats:
    seconds: float = 0.0
    launched_groups: int = 0
    done_groups: int = 0
    filtered_groups: int = 0  # dynamic sampling: finished with all-equal rewards
    buffered_groups: int = 0
    dropped_groups: int = 0  # must be 0: finished groups neither trained nor buffered
    resumed_samples: int = 0
    new_tokens: int = 0  # tokens generated this step
    trained_tokens: int = 0  # response tokens of the samples returned for training (not buffered, not filtered)
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (time, running sequences) per engine step

    def tail_idle_fraction(self) -> float:
        """Share of rollout time during which fewer than half the peak number of sequences ran."""
        if len(self.timeline) < 2:
            return 0.0
        peak = max(n for _, n in self.timeline)
        idle = sum(t1 - t0 for (t0, n), (t1, _) in zip(self.timeline, self.timeline[1:]) if n < peak / 2)
        return idle / max(self.timeline[-1][0] - self.timeline[0][0], 1e-9)

    def as_dict(self) -> dict[str, float]:
        return {"rollout_seconds": self.seconds, "launched_groups": self.launched_groups,
                "done_groups": self.done_groups, "filtered_groups": self.filtered_groups,
                "buffered_groups": self.buffered_groups, "dropped_groups": self.dropped_groups,
                "resumed_samples": self.resumed_samples, "rollout_new_tokens": self.new_tokens,
                "rollout_tokens_per_s": self.trained_tokens / max(self.seconds, 1e-9),
                "tail_idle_fraction": self.tail_idle_fraction()}


class AprilRollout:
    def __init__(self, backend: RolloutBackend, spec: RolloutConfig, prompts: Iterator[Prompt],
                 encode: Callable[[Prompt], ModelInput], score: Callable[[Group], None], seed: int = 0):
        self.backend, self.spec = backend, spec
        self.prompts, self.encode, self.score = prompts, encode, score
        self.buffer = PartialBuffer()
        self.rng = random.Random(seed)
        self.next_group_id = 0
        self.failures: dict[str, int] = {}  # sample key -> requests the engine failed (not checkpointed)

    def collect(self, step: int, version: int) -> tuple[list[Group], RolloutStats]:
        """Roll out until prompts_per_step groups are done; returns them (maybe a few more)."""
        spec, stats = self.spec, RolloutStats()
        start = time.perf_counter()
        live: dict[int, Group] = {}
        done: list[Group] = []
        budget = spec.group_budget
        target = math.ceil(spec.prompts_per_step * spec.over_provision)
        self._launch(live, target, step, version, stats)
        while len(done) < spec.prompts_per_step and live:
            for key, out in self.backend.poll():
                self._update(live, done, key, out, version, stats)
            stats.timeline.append((time.perf_counter() - start, self.backend.num_running))
            if spec.dynamic_sampling and len(done) < spec.prompts_per_step and len(done) + len(live) < target \
                    and stats.launched_groups < budget:  # replacements for filtered groups, never past the budget
                self._launch(live, min(target - len(done) - len(live), budget - stats.launched_groups), step, version, stats)
        for key, out in self.backend.abort_all():  # at once; groups that finished meanwhile are kept
            self._update(live, done, key, out, version, stats, aborting=True)
        for group in live.values():
            self.buffer.put(group)
        stats.buffered_groups = len(live)
        stats.done_groups = len(done)
        stats.dropped_groups = stats.launched_groups - stats.done_groups - stats.filtered_groups - stats.buffered_groups
        stats.seconds = time.perf_counter() - start
        stats.trained_tokens = sum(len(smp.response_ids) for g in done for smp in g.samples)
        return sorted(done, key=lambda g: g.group_id), stats  # launch order, whatever the finishing order

    def _launch(self, live: dict[int, Group], n: int, step: int, version: int, stats: RolloutStats) -> None:
        groups = self.buffer.take(n)
        stats.resumed_samples += sum(1 for g in groups for s in g.unfinished() if s.response_ids)
        groups += [self._new_group(next(self.prompts), step) for _ in range(n - len(groups))]
        for group in groups:
            live[group.group_id] = group
            stats.launched_groups += 1
            inp = self.encode(group.prompt)  # token ids, or a VLM prompt with its images (not kept in checkpoints)
            for s in group.samples:
                s.multimodal = multimodal(inp)
            for s in group.unfinished():
                self._submit(group, s, inp)

    def _submit(self, group: Group, s: Sample, inp: ModelInput) -> None:
        """Generate sample `s`, resuming from the tokens it has."""
        s.status = Status.RUNNING
        params = SamplingParams(temperature=self.spec.temperature, top_p=self.spec.top_p, seed=s.seed,
                                max_tokens=self.spec.max_tokens, detokenize=False)
        latents = {"output_latents": s.latents} if s.latents is not None else {}  # LVR latent mode
        self.backend.submit(f"{group.group_id}:{s.index}", inp, params, s.response_ids, s.logprobs, **latents)

    def _new_group(self, prompt: Prompt, step: int) -> Group:
        gid = self.next_group_id
        self.next_group_id += 1
        ids = token_ids(self.encode(prompt))
        samples = [Sample(prompt_ids=ids, group_id=gid, index=i, seed=self.rng.randrange(1 << 62), prompt=prompt)
                   for i in range(self.spec.samples_per_prompt)]
        return Group(gid, prompt, ids, samples, born_step=step)

    def _update(self, live, done, key: str, out: CompletionOutput, version: int, stats: RolloutStats,
                aborting: bool = False) -> None:
        gid, index = (int(x) for x in key.split(":"))
        group = live[gid]
        s = group.samples[index]
        new = out.token_ids[len(s.response_ids):]
        if out.token_ids[:len(s.response_ids)] != s.response_ids:
            raise RuntimeError(f"sample {key}: the engine changed tokens it was given to resume from")
        s.response_ids = list(out.token_ids)
        s.logprobs = s.logprobs + list(out.logprobs[len(s.logprobs):])
        s.versions = s.versions + [version] * len(new)
        s.latents = out.latents  # LVR latent mode: all of the response's latents, resumed ones included
        s.status = STATUS[out.finish_reason]
        stats.new_tokens += len(new)
        if out.finish_reason in ("error", "abort") and not aborting:  # an abort this rollout did not ask for
            self._retry(group, s, key, out.finish_reason)
        if not s.status.finished:
            return
        self.failures.pop(key, None)
        if group.finished:
            del live[gid]
            self.score(group)
            if self.spec.dynamic_sampling and len({smp.reward for smp in group.samples}) == 1:
                stats.filtered_groups += 1
            else:
                done.append(group)

    def _retry(self, group: Group, s: Sample, key: str, reason: str = "error") -> None:
        """The engine failed this sample's request alone, or aborted it unasked (another client's
        /v1/abort on a shared server): resubmit it from its tokens, or raise after `MAX_FAILURES`
        (waiting on it would stall the step forever: nothing else brings its group back)."""
        n = self.failures[key] = self.failures.get(key, 0) + 1
        if n > MAX_FAILURES:
            raise RuntimeError(f"sample {key}: the engine ended its request {n} times (finish_reason {reason!r}; "
                               + ("the engine's log has each exception" if reason == "error" else
                                  "something else aborts this rollout's requests") + "), giving up")
        log.warning("sample %s: the engine %s its request (%d of %d tries); resubmitting it from its %d tokens",
                    key, "aborted" if reason == "abort" else "failed", n, MAX_FAILURES, len(s.response_ids))
        self._submit(group, s, self.encode(group.prompt))

    def state_dict(self) -> dict:
        return {"buffer": self.buffer.state_dict(), "rng": self.rng.getstate(), "next_group_id": self.next_group_id}

    def load_state_dict(self, state: dict) -> None:
        self.buffer.load_state_dict(state["buffer"])
        rng = state["rng"]
        self.rng.setstate((rng[0], tuple(rng[1]), rng[2]))
        self.next_group_id = state["next_group_id"]
