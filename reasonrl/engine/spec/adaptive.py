"""Adaptive speculation: how large a draft tree each step gets, down to none.

Speculation pays while verifying extra rows is nearly free: the target step is bound by per-step
overhead or by reading its weights (batch 1 on a GPU), not by arithmetic. With many sequences in
flight the same step turns compute-bound, every drafted row costs about what a real one does, and
a tree of 32 rows per sequence slows decoding down (0.40x of plain decoding at 32 requests on the
demo policy, docs/benchmarks.md). Production engines switch speculation off under load at a fixed
batch size (vLLM's `speculative_disable_by_batch_size`); here the switch is measured, so it sits
where this hardware, this model and this draft put it:

- Shapes: a ladder from the configured tree down. Rung r has `num_nodes / 2^r` draft tokens
  (depth capped at that count, top-k the fewest that fill it: a chain at the bottom), and the
  last rung is no tree at all.
- Acceptance, per rung: the mean of the tokens a verified sequence emits and keeps per step
  (accepted drafts plus the target's own, less any past a stop or the length limit: they add
  nothing to the output) over the rung's newest `acceptance_window` (32) verified sequences,
  L(rung), from drafts that have seen the whole sequence (one whose context restarted
  mid-sequence accepts less; it counts only where nothing else is known). No tree emits 1 token.
- Cost, per batch-size bucket (the step's decoding sequences, rounded up to a power of two) and
  rung, no tree included: the median of the last `COST_WINDOW` (3) measurements of a step's wall
  seconds per decoding sequence, c(bucket, rung), on the steps that run it there. A median, not an
  average: step times have a long upper tail (a pause of the host costs ten steps' time), and a
  rung measured only by one-step trials would carry one slow trial in an average until its next
  trial, many steps on; on the demo policy with the C++ forward that held batch 1 on losing trees.
  It holds everything a tree costs: draft forwards,
  masks, verification, cache bookkeeping, and the draft's catch-up (over a new prompt, the draft's
  prefill: a real price of speculating). Prompt rows that share the step are taken out at the
  price of a row, the slope of a running least-squares fit of steps without trees (seconds by
  rows, prefill-only steps included). Costs are measured where they are used, never extrapolated
  from other batch sizes (on the demo policy, after a run at 64 in flight, a fit across sizes
  put a one-row step at 1.1 ms where such steps take 2.5-3.7 ms).
- Choice: rung r is estimated at L(r) / c(bucket, r) tokens per sequence-second; each bucket runs
  the best, a tree only when it beats no tree by `margin` (5%), so noise does not flip a bucket
  to and fro. Every `explore_every` of its steps it measures what it could switch to, for
  `COST_WINDOW` steps each, judged on those steps alone (the rung's older figures are dropped when
  the trial starts): the first step after a switch is slow (on the demo policy at batch 1 the
  first no-tree step after a tree took 250-400 us where the next took 170-200), and judged on that
  one step, as one-step trials were, batch 1 stayed on 16-token trees at 0.86x of plain decoding,
  and a tree a third faster than no tree, whose first step after a stretch without trees is slow
  too, could be left for good. A tree's trial runs one step more and leaves its first out of the
  cost (that step and a request's first tree step, which carries the prompt's catch-up, made two
  slow steps of three at batch 1, and the median was theirs). A bucket that leaves its rung between trials (its own newest steps got
  slower than another rung's older figures) gives the rung it left a second look of
  `COST_WINDOW` steps within `COST_WINDOW` steps, which does not reset its trial interval: two
  slow steps in a row (a pause of the host: 856 and 573 us among steps of 170) had switched
  batch 1 from no tree to 8-token trees for hundreds of steps, until its next trial measured no
  tree again. The trials:
  without a tree, the best tree measured there, else the tree the next smaller bucket runs
  (in the smallest bucket, the smallest tree), and none at all while a smaller bucket runs
  without trees (a tree's extra rows only cost more with more sequences); with one, the sizes
  either side and no tree, walking on at once toward larger trees while they win. A round that
  finds nothing better doubles the bucket's interval (up to `max_explore_every`), so losing
  trials cost little. A new bucket starts with what the nearest one runs (batch 1 always with the
  full tree; the very first above it with no tree) and has its first trial after one step.
- Off is free: a bucket without trees and with no trial due hands the draft no features
  (`wants_features`); its context restarts where they resume, so a later tree catches up over
  a few rows, not over the stretch it skipped (and its acceptance is not taken for the tree's).
  Nor does it keep measuring no tree: only `COST_WINDOW` steps shortly before a trial do (before
  the `FEATURE_LEAD` steps that hand the draft features again, so the figures are those of plain
  steps), and the steps between cost the policy a bucket lookup and no step log (on the demo
  policy at batch 1 that bookkeeping was about 5% of a 0.19 ms step; they no longer teach the
  price of a row either, which steps with prompt rows and trial windows still do).

Output does not depend on any of this: every rung, none included, is lossless (greedy and coupled
sampling token-identical to plain decoding), so the choice may follow wall-clock noise freely.

Departures: EAGLE-2 auto-tunes its total tokens once, offline, by timing (`total_token=-1`);
vLLM and SGLang switch off by a fixed batch size. This policy is online and per batch size, and it
picks among smaller trees too, not only on or off.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field

from reasonrl.config import positive_ints


@dataclass
class AdaptiveConfig:
    enabled: bool = True
    """Choose each step's tree (down to none) from measurements; off: always the configured tree."""
    max_batch: int | None = None
    """Never speculate with more sequences decoding than this (vLLM's fixed switch); None: the
    measurements alone decide."""
    explore_every: int = 16
    """Steps of a batch-size bucket between trials of a neighbouring tree size (or of no tree)."""
    max_explore_every: int = 2048
    """Cap of the trial interval, which doubles after each losing trial (bounds what trials cost: at
    batch 1 of the demo policy on a CPU a losing trial of a 16-token tree costs about ten no-tree
    steps, about 1.5% of the time at a cap of 512; a bucket still looks again within 0.4 s there)."""
    acceptance_window: int = 32
    """Verified sequences a rung's acceptance is the mean over, the newest (step costs are medians:
    `COST_WINDOW`). Per sequence: at batch 1 one step is one sequence, whose kept tokens swing from 1
    to the tree's depth, and an average over a trial's three steps alone (an EMA of them, as before)
    held the demo policy's 4-token chain at 2.5-2.9 tokens where it keeps 4.3."""
    margin: float = 0.05
    """A tree is chosen over no tree only when its estimated rate is this fraction higher: where the
    two are close, noisy step timings would otherwise flip a bucket back and forth, and every
    switch costs the draft a catch-up."""

    def __post_init__(self):
        if not 0 <= self.margin < 1:
            raise ValueError(f"adaptive speculation: margin must be in [0, 1), got {self.margin!r}")
        positive_ints(self, ("explore_every", "max_explore_every", "acceptance_window"), "adaptive speculation: ")
        if self.max_batch is not None and (not isinstance(self.max_batch, int) or self.max_batch < 0):
            raise ValueError(f"adaptive speculation: max_batch must be a non-negative integer, got {self.max_batch!r}")


@dataclass(frozen=True)
class TreeShape:
    top_k: int
    depth: int
    num_nodes: int


def ladder(top_k: int, depth: int, num_nodes: int) -> list[TreeShape | None]:
    """The configured shape, then halved draft-token counts down to 1, then None (no tree)."""
    shapes, n = [TreeShape(top_k, depth, num_nodes)], num_nodes // 2
    while n >= 1:
        d = min(depth, n)
        shapes.append(TreeShape(min(top_k, math.ceil(n / d)), d, n))
        n //= 2
    return shapes + [None]


COST_WINDOW = 3
"""A rung's cost in a bucket is the median of its last this many step measurements there: one slow
step cannot move it, two agreeing ones do."""

FEATURE_LEAD = 2
"""Steps before a trial in which a bucket without trees hands the draft the target's features
again, so the trial's draft has some context."""


def bucket_of(num_seqs: int) -> int:
    return 1 << max(num_seqs - 1, 0).bit_length()


class LinearFit:
    """Running least-squares fit y ~ a + b x with exponential forgetting (`weight` per new point),
    kept for its slope b (non-negative)."""

    def __init__(self, weight: float):
        self.weight = weight
        self.n = self.sx = self.sy = self.sxx = self.sxy = 0.0

    def add(self, x: float, y: float) -> None:
        d = 1 - self.weight
        self.n, self.sx, self.sy = d * self.n + 1, d * self.sx + x, d * self.sy + y
        self.sxx, self.sxy = d * self.sxx + x * x, d * self.sxy + x * y

    def slope(self) -> float:
        """b, fitted; 0 until two distinct x have been seen."""
        if not self.fitted:
            return 0.0
        mx, my = self.sx / self.n, self.sy / self.n
        return max((self.sxy / self.n - mx * my) / (self.sxx / self.n - mx * mx), 0.0)

    @property
    def fitted(self) -> bool:
        """Two distinct x seen: the slope is determined."""
        if not self.n:
            return False
        mx = self.sx / self.n
        return self.sxx / self.n - mx * mx > 1e-6 * max(mx * mx, 1.0)


@dataclass
class StepLog:
    """One step as the policy sees it: the rung chosen for its `num_seqs` decoding sequences, the
    rows it computed besides theirs, and what the verified trees emitted."""

    num_seqs: int
    rung: int
    prefill_rows: int = 0  # prompt rows computed in the same step
    tree_rows: int = 0  # draft rows the step's trees added to the target's batch
    emitted: int = 0  # tokens kept by sequences that verified a tree with a whole-sequence draft
    verified: int = 0  # such sequences
    cold_emitted: int = 0  # the same for drafts whose context restarted mid-sequence
    cold_verified: int = 0
    built: bool = False  # torch.compile made a graph or a CUDA graph was captured in the step (grow.py): not measured


@dataclass
class _Bucket:
    size: int
    best: int  # the rung this bucket runs between trials
    countdown: int  # steps to the next trial
    interval: int
    trial: int | None = None
    trial_steps: int = 0  # steps the current trial has run (COST_WINDOW, a tree's one more)
    warmed: bool = False  # the current tree trial's first step that drafted has run (and was left out)
    recheck: int | None = None  # the rung the bucket left between trials, queued for a second look
    queue: list[int] = field(default_factory=list)  # trials still to run, one step apart
    cost: dict[int, float] = field(default_factory=dict)  # rung -> median of a step's recent seconds per decoding sequence
    samples: dict[int, deque] = field(default_factory=dict)  # rung -> those recent seconds, at most COST_WINDOW


class AdaptivePolicy:
    def __init__(self, shapes: list[TreeShape | None], config: AdaptiveConfig | None = None):
        self.shapes, self.config = shapes, config or AdaptiveConfig()
        self.off = len(shapes) - 1  # the rung without a tree
        self.accepted = {self.off: 1.0}  # rung -> tokens kept per verified sequence and step (`Acceptance.mean`)
        self.acceptance: dict[int, Acceptance] = {}
        self.whole = {self.off}  # rungs whose acceptance comes from drafts that saw the whole sequence
        self.rows = LinearFit(weight=0.05)  # seconds of a step without trees, by the rows it computes
        self.buckets: dict[int, _Bucket] = {}

    def choose(self, num_seqs: int) -> int:
        """The rung for a step with `num_seqs` decoding sequences."""
        c = self.config
        if not c.enabled:
            return 0
        if c.max_batch is not None and num_seqs > c.max_batch:
            return self.off
        b = self._bucket(bucket_of(num_seqs))
        if b.trial is None:
            b.countdown -= 1
            if b.countdown <= 0:
                b.queue = b.queue or self._round(b)
                if b.queue:
                    b.trial = b.queue.pop(0)
                    b.samples.pop(b.trial, None)  # a fresh look, judged on the trial's own steps alone
                    b.cost.pop(b.trial, None)
                else:  # nothing worth trying: wait longer
                    b.interval = b.countdown = min(2 * b.interval, c.max_explore_every)
        return b.best if b.trial is None else b.trial

    def wants_features(self, num_seqs: int) -> bool:
        """Whether a step with `num_seqs` decoding sequences should hand the draft the target's
        features: yes where trees run or a trial is due within `FEATURE_LEAD` steps; no in a bucket that
        runs without trees (there, speculation costs nothing; the draft's context restarts
        where features resume, so the next tree needs no catch-up over the skipped stretch)."""
        c = self.config
        if not c.enabled:
            return True
        if c.max_batch is not None and (num_seqs > c.max_batch or c.max_batch == 0):  # 0: never a tree, prompts included
            return False
        b = self.buckets.get(bucket_of(num_seqs))
        return b is None or b.best != self.off or b.trial is not None or bool(b.queue) or b.countdown <= FEATURE_LEAD

    def resting(self, num_seqs: int) -> bool:
        """Whether a step of `num_seqs` decoding sequences run without a tree needs nothing from the
        speculator: over `max_batch`, or in a bucket settled without trees more than
        `FEATURE_LEAD + COST_WINDOW` steps before its next trial. The speculator then skips its
        bookkeeping (no step log: such steps teach the policy nothing, not even the price of a row)."""
        c = self.config
        if c.max_batch is not None and num_seqs > c.max_batch:
            return True
        b = self.buckets.get(bucket_of(num_seqs))
        return b is not None and self._settled_off(b) and b.countdown > FEATURE_LEAD + COST_WINDOW

    def _settled_off(self, b: _Bucket) -> bool:
        return b.best == self.off and b.trial is None and not b.queue

    def _measures_off(self, b: _Bucket) -> bool:
        """A bucket settled without trees measures no tree (once it has a figure for it) in the
        `COST_WINDOW` steps before it starts handing the draft features for its next trial: fresh
        figures, on steps that cost what a step without trees costs (the `FEATURE_LEAD` steps after
        them carry the hand-over)."""
        return not self._settled_off(b) or self.off not in b.cost or FEATURE_LEAD < b.countdown <= FEATURE_LEAD + COST_WINDOW

    def observe(self, log: StepLog, seconds: float) -> None:
        """The step `log` describes took `seconds`. Steps without tree rows (any batch size,
        prefill-only ones too; resting steps have no log) teach what a row costs; steps with decoding sequences the cost per
        sequence of their rung at their bucket, the prompt rows they carried taken out at that
        price; verified trees the acceptance of their rung (drafts that restarted mid-sequence
        count only until a whole-sequence one is seen: they accept less, and would make a trial
        after a stretch without features look worse than the tree runs)."""
        c = self.config
        if not c.enabled or log.built:  # a step that compiled or captured: a trial in it runs again
            return
        if not log.tree_rows:
            self.rows.add(log.prefill_rows + log.num_seqs, seconds)
        if not log.num_seqs or (c.max_batch is not None and log.num_seqs > c.max_batch):
            return
        b = self._bucket(bucket_of(log.num_seqs))
        if log.rung == self.off and not self._measures_off(b):
            return  # settled without trees: no tree is measured afresh shortly before the next trial
        rung = log.rung if log.tree_rows else self.off  # a tree rung whose sequences drafted nothing ran as none
        if log.prefill_rows and not self.rows.fitted:
            return  # the prompt rows' share is not known yet (a trial in this step runs again)
        trial = b.trial is not None and b.trial == log.rung
        warm_up = trial and rung != self.off and not b.warmed  # a tree trial's first step that drafts warms up
        b.warmed |= warm_up
        if not warm_up:
            prefill = self.rows.slope() * log.prefill_rows
            recent = b.samples.setdefault(rung, deque(maxlen=COST_WINDOW))
            recent.append(max(seconds - prefill, 0.0) / log.num_seqs)
            b.cost[rung] = statistics.median(recent)
        if log.verified:
            if rung not in self.whole:  # a cold draft's figure stood in until now
                self.acceptance[rung] = Acceptance(c.acceptance_window)
                self.whole.add(rung)
            self.accepted[rung] = self.acceptance[rung].add(log.emitted, log.verified)
        elif log.cold_verified and rung not in self.whole:
            window = self.acceptance.setdefault(rung, Acceptance(c.acceptance_window))
            self.accepted[rung] = window.add(log.cold_emitted, log.cold_verified)
        if trial:
            b.trial_steps += 1
            if b.trial_steps >= COST_WINDOW + (log.rung != self.off):
                self._settle_trial(b)
        else:
            best = self._argmax(b)
            if best != b.best and b.trial is None:
                # it left what it ran on that rung's newest steps against the others' older figures:
                # a pause of the host does that, so the rung it left gets a second look soon
                b.recheck = b.best
                b.queue = [b.best, *(r for r in b.queue if r not in (b.best, best))]
                b.countdown = min(b.countdown, COST_WINDOW)
            b.best = best

    def rate(self, bucket: int, rung: int) -> float | None:
        """Estimated tokens per sequence-second of `rung` for a decode step of `bucket` sequences
        (None: not measured)."""
        b = self.buckets.get(bucket)
        if b is None or rung not in b.cost or rung not in self.accepted:
            return None
        return self.accepted[rung] / max(b.cost[rung], 1e-9)

    # ---- trials ----------------------------------------------------------------------------------
    def _bucket(self, size: int) -> _Bucket:
        """A new bucket at batch 1 starts with the full tree (where speculation pays if anywhere:
        starting it without trees, as a first bucket at 2 in flight would have it, leaves only
        trials on drafts that missed their prompts to find that out); any other runs what the
        nearest one runs, or no tree. Its costs are its own, measured from its first step, and its
        first trial comes after one step."""
        if size not in self.buckets:
            near = min(self.buckets, key=lambda k: abs(math.log2(k) - math.log2(size)), default=None)
            best = 0 if size == 1 else self.buckets[near].best if near is not None else self.off
            self.buckets[size] = _Bucket(size, best, countdown=2, interval=self.config.explore_every)
        return self.buckets[size]

    def _round(self, b: _Bucket) -> list[int]:
        """Without a tree: the tree measured best here (one noisy step may have turned the bucket
        off; the smallest tree gains least and would rarely win it back), then the next smaller
        tree than any measured here, until the ladder's smallest has been (where a large tree
        costs more than it gains, a small one may still pay: on the demo policy at batch 1 the
        4-token chain does, the 16- and 32-token trees the bucket starts from do not); when none is
        measured, the tree the next smaller bucket runs, or, in the smallest bucket, the smallest
        tree; and nothing while a smaller bucket runs without trees too (a tree's extra rows cost
        more the more sequences carry one). With one: the trees either side, and no tree."""
        if b.best == self.off:
            smaller = [k for k in self.buckets if k < b.size]
            if smaller and self.buckets[max(smaller)].best == self.off:
                return []
            measured = [r for r in b.cost if r != self.off and self.rate(b.size, r)]
            if measured:
                below = max(measured) + 1  # rungs grow smaller down the ladder
                return [max(measured, key=lambda r: self.rate(b.size, r)), *([below] if below < self.off else [])]
            return [self.buckets[max(smaller)].best if smaller else self.off - 1]
        return list(dict.fromkeys(r for r in (b.best - 1, b.best + 1, self.off) if 0 <= r <= self.off))

    def _settle_trial(self, b: _Bucket) -> None:
        trial, before = b.trial, b.best
        recheck = trial == b.recheck
        b.trial, b.trial_steps, b.warmed = None, 0, False
        if recheck:
            b.recheck = None
        won = self._score(b, trial) > self._score(b, before)
        if won and trial < before and trial > 0 and not recheck:
            b.queue = [trial - 1, *b.queue]  # a larger tree won: try the next larger one at once
        b.best = self._argmax(b)
        if b.queue:
            b.countdown = 1
        elif recheck:  # a second look after a pause is not an exploration: the interval stands
            b.countdown = b.interval
        else:
            b.interval = self.config.explore_every if won else min(2 * b.interval, self.config.max_explore_every)
            b.countdown = b.interval

    def _argmax(self, b: _Bucket) -> int:
        """The best measured rung; a bucket leaves what it runs only once that is measured too."""
        if b.best not in b.cost:
            return b.best
        scores = {r: self._score(b, r) for r in b.cost}
        scores = {r: v for r, v in scores.items() if v > 0}
        return max(scores, key=scores.get) if scores else b.best

    def _score(self, b: _Bucket, rung: int) -> float:
        """The estimated rate, no tree's raised by the margin a tree must beat (0: not measured)."""
        rate = self.rate(b.size, rung) or 0.0
        return rate * (1 + self.config.margin) if rung == self.off else rate

    def stats(self) -> dict[str, float]:
        """Per bucket, the current tree's draft tokens (0: speculation off there)."""
        out = {}
        for size, b in sorted(self.buckets.items()):
            shape = self.shapes[b.best]
            out[f"spec_tree_tokens_at_batch_{size}"] = 0 if shape is None else shape.num_nodes
        return out


class Acceptance:
    """Tokens kept per verified sequence over a rung's newest `window` verified sequences (whole
    steps: a step's sequences come and go together)."""

    def __init__(self, window: int):
        self.window = window
        self.steps: deque[tuple[int, int]] = deque()  # (tokens kept, sequences verified) per step
        self.kept = self.seqs = 0

    def add(self, kept: int, seqs: int) -> float:
        """Record a step; the mean now."""
        self.steps.append((kept, seqs))
        self.kept, self.seqs = self.kept + kept, self.seqs + seqs
        while self.seqs - self.steps[0][1] >= self.window:
            old_kept, old_seqs = self.steps.popleft()
            self.kept, self.seqs = self.kept - old_kept, self.seqs - old_seqs
        return self.kept / self.seqs
