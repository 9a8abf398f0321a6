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
- Acceptance, per rung: an EMA of the tokens a verified sequence emits per step (accepted drafts
  plus the target's own), L(rung). No tree emits 1 token.
- Cost, per batch-size bucket (decoding sequences rounded up to a power of two) and rung: an EMA
  of the wall seconds of a decode-only step (draft, target, bookkeeping), t(bucket, rung).
- Choice: each bucket holds a current rung and moves to a measured neighbour whose estimated
  throughput L / t (tokens per sequence-second; the bucket is the same for both) is higher.
  Every `explore_every` steps of a bucket, a neighbour is tried for one step; a trial that loses
  doubles the bucket's interval (up to `max_explore_every`), one that wins tries the next rung
  in the same direction at once, so a bucket walks the ladder in a few steps. A new bucket starts
  at the rung of the nearest bucket seen.

Output does not depend on any of this: every rung, none included, is lossless (greedy and coupled
sampling token-identical to plain decoding), so the choice may follow wall-clock noise freely.

Departures: EAGLE-2 auto-tunes its total tokens once, offline, by timing (`total_token=-1`);
vLLM and SGLang switch off by a fixed batch size. This policy is online and per batch size, and it
picks among smaller trees too, not only on or off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class AdaptiveConfig:
    enabled: bool = True
    """Choose each step's tree (down to none) from measurements; off: always the configured tree."""
    max_batch: int | None = None
    """Never speculate with more sequences decoding than this (vLLM's fixed switch); None: the
    measurements alone decide."""
    explore_every: int = 16
    """Steps of a batch-size bucket between trials of a neighbouring tree size."""
    max_explore_every: int = 512
    """Cap of the trial interval, which doubles after each losing trial (bounds what trials cost)."""
    ema: float = 0.25
    """Weight of the newest measurement in the running estimates of step time and acceptance."""

    def __post_init__(self):
        if not 0 < self.ema <= 1:
            raise ValueError(f"adaptive speculation: ema must be in (0, 1], got {self.ema!r}")
        for name in ("explore_every", "max_explore_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"adaptive speculation: {name} must be a positive integer, got {getattr(self, name)!r}")
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


def bucket_of(num_seqs: int) -> int:
    return 1 << max(num_seqs - 1, 0).bit_length()


@dataclass
class _Bucket:
    size: int
    best: int  # the rung this bucket runs between trials
    countdown: int  # steps to the next trial
    interval: int
    trial: int | None = None
    queue: list[int] = field(default_factory=list)  # trials of the current round, run one step apart
    seconds: dict[int, float] = field(default_factory=dict)  # rung -> EMA of a decode-only step's seconds


class AdaptivePolicy:
    def __init__(self, shapes: list[TreeShape | None], config: AdaptiveConfig | None = None):
        self.shapes, self.config = shapes, config or AdaptiveConfig()
        self.off = len(shapes) - 1  # the rung without a tree
        self.accepted = {self.off: 1.0}  # rung -> EMA of tokens per verified sequence and step
        self.buckets: dict[int, _Bucket] = {}

    def choose(self, num_seqs: int) -> int:
        """The rung for a step with `num_seqs` sequences that could get a tree."""
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
                b.trial = b.queue.pop(0)
        return b.best if b.trial is None else b.trial

    def observe(self, num_seqs: int, rung: int, seconds: float, emitted: int, verified: int) -> None:
        """A decode-only step at `rung` took `seconds`; its `verified` trees emitted `emitted` tokens."""
        c = self.config
        if not c.enabled or (c.max_batch is not None and num_seqs > c.max_batch):
            return
        if verified:
            self.accepted[rung] = _ema(self.accepted.get(rung), emitted / verified, c.ema)
        b = self._bucket(bucket_of(num_seqs))
        b.seconds[rung] = _ema(b.seconds.get(rung), seconds, c.ema)
        if b.trial == rung:
            self._settle_trial(b)
        elif rung == b.best:
            b.best = self._argmax(b)

    def rate(self, bucket: int, rung: int) -> float | None:
        """Estimated tokens per sequence-second of `rung` at `bucket` (None: not measured there)."""
        b = self.buckets.get(bucket)
        seconds = None if b is None else b.seconds.get(rung)
        if seconds is None or rung not in self.accepted:
            return None
        return self.accepted[rung] / max(seconds, 1e-9)

    # ---- trials ----------------------------------------------------------------------------------
    def _bucket(self, size: int) -> _Bucket:
        """A new bucket starts where the nearest one is (the very first: the full tree at batch 1,
        else no tree) and has its first trial after one step."""
        if size not in self.buckets:
            near = min(self.buckets, key=lambda k: abs(math.log2(k) - math.log2(size)), default=None)
            best = self.buckets[near].best if near is not None else (0 if size == 1 else self.off)
            self.buckets[size] = _Bucket(size, best, countdown=2, interval=self.config.explore_every)
        return self.buckets[size]

    def _round(self, b: _Bucket) -> list[int]:
        """Without a tree: the smallest tree (the cheapest trial where trees lose). With one: no
        tree, and the trees either side."""
        if b.best == self.off:
            return [self.off - 1]
        return [self.off] + [r for r in (b.best - 1, b.best + 1) if 0 <= r < self.off]

    def _settle_trial(self, b: _Bucket) -> None:
        trial, before = b.trial, b.best
        b.trial = None
        won = (self.rate(b.size, trial) or 0.0) > (self.rate(b.size, before) or 0.0)
        if won and before == self.off and trial == self.off - 1:
            b.queue = list(range(self.off - 2, -1, -1))  # trees pay here: measure every larger one
        b.best = self._argmax(b)
        if b.queue:
            b.countdown = 1
        else:
            b.interval = self.config.explore_every if won else min(2 * b.interval, self.config.max_explore_every)
            b.countdown = b.interval

    def _argmax(self, b: _Bucket) -> int:
        rates = {r: self.rate(b.size, r) for r in b.seconds}
        rates = {r: v for r, v in rates.items() if v is not None}
        return max(rates, key=rates.get) if rates else b.best

    def stats(self) -> dict[str, float]:
        """Per bucket, the current tree's draft tokens (0: speculation off there)."""
        out = {}
        for size, b in sorted(self.buckets.items()):
            shape = self.shapes[b.best]
            out[f"spec_tree_tokens_at_batch_{size}"] = 0 if shape is None else shape.num_nodes
        return out


def _ema(old: float | None, new: float, weight: float) -> float:
    return new if old is None else (1 - weight) * old + weight * new
