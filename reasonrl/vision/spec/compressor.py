"""The elastic visual compressor of SpecVLM (arXiv 2509.11815 §3.4), for the draft's visual rows.

Primitives, each mapping an image's K rows (K, h) to fewer:

- `prune`: keep ceil(K / ratio) rows drawn at random (a generator seeded by `seed` and K, so a
  request drafts the same way every time), in their original order;
- `pool`: average pooling over the rows in raster order, window = stride = ratio;
- `conv`: a strided 1-D convolution, kernel = stride = ratio (initialised to average pooling);
- `resampler`: one cross-attention layer from `num_queries` learned queries to the K rows (a
  Q-Former cut down to one layer; 2 queries by default, the paper's best);
- `text_only`: no rows at all.

Ways to combine them (`mode`):

- `select` (the paper's default): a gate reads the question (the mean of the target's features
  over the prompt's text rows) and picks one branch: Gumbel-softmax with a straight-through hard
  sample in training, the top-1 logit at inference;
- `weighted`: the gate's softmax mixes prune, pool and conv at the same ratio (same row count);
- `concat`: multi-granularity concatenation, prune and pool at `coarse_ratio`, conv at `ratio`,
  and the resampler.

Departures: the paper does not say in what order pooling and convolution run over the image; here
both run over the merged tokens in raster order (1-D), not over the 2-D grid. Pruning is seeded,
not fresh noise per call, so drafting is reproducible. The weighted mode mixes the branches the
configured set holds among prune/pool/conv.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from reasonrl.config import positive_ints

BRANCHES = ("prune", "pool", "conv", "resampler", "text_only")


@dataclass
class CompressorConfig:
    mode: Literal["select", "weighted", "concat"] = "select"
    """How branches combine: one picked per image by the gate, a gated mixture, or a concatenation."""
    branches: tuple[str, ...] = BRANCHES
    """Branches available (any of prune, pool, conv, resampler, text_only)."""
    ratio: int = 3
    """Compression ratio of prune, pool and conv (select and weighted), and of conv in concat."""
    coarse_ratio: int = 20
    """concat: ratio of prune and pool."""
    num_queries: int = 2
    """resampler: learned queries (rows it returns)."""
    tau: float = 1.0
    """Gumbel-softmax temperature of the select gate in training."""
    seed: int = 0
    """Seeds random pruning."""

    def __post_init__(self):
        self.branches = tuple(self.branches)
        bad = [b for b in self.branches if b not in BRANCHES]
        if bad or not self.branches:
            raise ValueError(f"compressor: branches must be a non-empty subset of {BRANCHES}, got {self.branches}")
        if self.mode == "weighted" and not set(self.branches) & {"prune", "pool", "conv"}:
            raise ValueError("compressor: weighted mode mixes prune, pool and conv; the branch set has none")
        positive_ints(self, ("ratio", "coarse_ratio", "num_queries"), "compressor: ")
        if self.mode not in ("select", "weighted", "concat") or self.tau <= 0:
            raise ValueError(f"compressor: mode must be select, weighted or concat and tau > 0, got {self.mode!r}, {self.tau}")


class VisualCompressor(nn.Module):
    def __init__(self, hidden: int, num_heads: int, config: CompressorConfig | None = None):
        super().__init__()
        self.config = c = config or CompressorConfig()
        self.hidden = hidden
        self.gated = [b for b in c.branches if c.mode == "select" or b in ("prune", "pool", "conv")]
        self.gate = nn.Linear(hidden, len(self.gated))
        self.forced: str | None = None  # set by `force`
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)
        if "conv" in c.branches:
            self.conv = nn.Conv1d(hidden, hidden, c.ratio, stride=c.ratio)
            with torch.no_grad():  # starts as average pooling
                self.conv.weight.zero_()
                self.conv.weight[torch.arange(hidden), torch.arange(hidden)] = 1.0 / c.ratio
                self.conv.bias.zero_()
        if "resampler" in c.branches:
            self.queries = nn.Parameter(torch.randn(c.num_queries, hidden) * hidden ** -0.5)
            self.cross = nn.MultiheadAttention(hidden, num_heads, batch_first=True)

    # ---- primitives: (K, h) -> (K', h) --------------------------------------------------------------
    def prune(self, x: torch.Tensor, ratio: int) -> torch.Tensor:
        k = x.shape[0]
        g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + k)
        keep = torch.randperm(k, generator=g)[: math.ceil(k / ratio)].sort().values
        return x[keep.to(x.device)]

    def pool(self, x: torch.Tensor, ratio: int) -> torch.Tensor:
        return F.avg_pool1d(x.t()[None], ratio, ratio, ceil_mode=True)[0].t()

    def conv_rows(self, x: torch.Tensor) -> torch.Tensor:
        r = self.config.ratio
        pad = (-x.shape[0]) % r
        if pad:  # repeat the last row, so a short tail is a (weighted) average of real rows
            x = torch.cat([x, x[-1:].expand(pad, -1)])
        return self.conv(x.t()[None])[0].t()

    def resample(self, x: torch.Tensor) -> torch.Tensor:
        q = self.queries.to(x.dtype)[None]
        out, _ = self.cross(q, x[None], x[None], need_weights=False)
        return (q + out)[0]

    def branch(self, name: str, x: torch.Tensor, ratio: int | None = None) -> torch.Tensor:
        r = ratio or self.config.ratio
        if name == "prune":
            return self.prune(x, r)
        if name == "pool":
            return self.pool(x, r)
        if name == "conv":
            return self.conv_rows(x)
        if name == "resampler":
            return self.resample(x)
        return x[:0]  # text_only

    # ---- combining ------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, question: torch.Tensor) -> tuple[torch.Tensor, str]:
        """x (K, h) an image's draft rows, question (h,) -> (K', h) and what was used."""
        c = self.config
        if self.forced is not None:
            return self.branch(self.forced, x), self.forced
        logits = self.gate(question.to(self.gate.weight.dtype)).float()
        if c.mode == "concat":
            parts = [self.branch(b, x, c.coarse_ratio if b in ("prune", "pool") else c.ratio) for b in c.branches]
            return torch.cat(parts), "concat"
        if c.mode == "weighted":
            w = logits.softmax(-1).to(x.dtype)
            return sum(w[i] * self.branch(b, x) for i, b in enumerate(self.gated)), "weighted"
        if self.training:  # straight-through Gumbel-softmax: one branch forward, the gate's gradient through its weight
            hard = F.gumbel_softmax(logits, tau=c.tau, hard=True)
            i = int(hard.argmax())
            return self.branch(self.gated[i], x) * hard[i].to(x.dtype), self.gated[i]
        i = int(logits.argmax())
        return self.branch(self.gated[i], x), self.gated[i]

    @contextmanager
    def force(self, branch: str):
        """Every image through `branch`, whatever the gate says (the gate's supervision in
        distillation, and ablations)."""
        if branch not in self.config.branches:
            raise ValueError(f"compressor: no branch {branch!r} (this one has {self.config.branches})")
        self.forced = branch
        try:
            yield
        finally:
            self.forced = None

    def choose(self, question: torch.Tensor) -> str:
        """The branch select mode picks at inference for this question."""
        return self.gated[int(self.gate(question.to(self.gate.weight.dtype)).argmax())]

    def output_rows(self, k: int, branch: str) -> int:
        c = self.config
        if branch == "concat":
            return sum(self.output_rows(k, b) if b not in ("prune", "pool") else math.ceil(k / c.coarse_ratio)
                       for b in c.branches)
        if branch == "weighted":
            return math.ceil(k / c.ratio)
        return {"prune": math.ceil(k / c.ratio), "pool": math.ceil(k / c.ratio), "conv": math.ceil(k / c.ratio),
                "resampler": c.num_queries, "text_only": 0}[branch]

    def flops(self, k: int, branch: str) -> float:
        """Approximate FLOPs of compressing K rows with `branch` (multiply-adds count 2), gate included."""
        h, c = self.hidden, self.config
        gate = 2 * h * len(self.gated)
        if branch in ("concat", "weighted"):
            names = c.branches if branch == "concat" else self.gated
            return gate + sum(self.flops(k, b) - gate for b in names if b != "text_only")
        per = {"prune": 0.0, "pool": float(k * h), "conv": 2.0 * k * h * h, "text_only": 0.0,
               "resampler": 2.0 * (2 * c.num_queries * h * h + 2 * k * h * h + 2 * c.num_queries * k * h)}
        return gate + per[branch]
