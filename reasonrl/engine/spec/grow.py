"""One depth of draft-tree growth as a function of tensors alone, eager or compiled.

Growing a tree (speculator.py, `_grow`) runs the draft once per depth over every sequence's
frontier: its decoder layer, the target's LM head and a log-softmax. On small models each of
those is dozens of operations whose launch or dispatch costs more than their arithmetic (what
compiling buys, measured: docs/spec.md, "Compiled draft"). `GrowStep` runs the depth through `torch.compile` (inductor, dynamic shapes: the
committed rows and the frontier rows drafted so far grow from call to call) when
`EngineConfig.draft_compile` asks for it.

Greedy and `coupled`-sampled output cannot change: the draft only proposes, and verification
decides every token. Compiled and eager drafts may round differently, so they may propose other
tokens now and then (the accepted length moves; with `draft_sampling="residual"` the tokens drawn
move too, their distribution does not).

Compiling happens at engine start (`warm_up`: batch 2 and batch 1, each with and without earlier
frontier rows, which are the graphs a run needs); when a shape still compiles later (a size of 1
elsewhere, which torch.compile specialises), the speculator sees the process's graph count move
(`graph_count`) and keeps that step's time out of the adaptive policy's measurements (a compile in
another thread at that moment counts too, which costs one measurement). A compile that fails (no
C++ compiler for inductor, say) logs a warning and the draft runs eager from then on.
"""

from __future__ import annotations

import logging
import time

import torch
from torch._dynamo.utils import counters
from torch.fx.experimental import _config as fx_config

from reasonrl.engine.spec.draft import DraftHead
from reasonrl.engine.spec.draft_state import PaddedDraftAttention

log = logging.getLogger(__name__)


def grow_step(draft: DraftHead, tokens: torch.Tensor, features: torch.Tensor, positions: torch.Tensor,
              past_k: torch.Tensor, past_v: torch.Tensor, past_lens: torch.Tensor, mask: torch.Tensor,
              extra_k: torch.Tensor | None, extra_v: torch.Tensor | None):
    """The frontier's (N,) tokens, (N, h) parent features and (N,) positions, the committed rows
    (B, P, H, D) with their counts (B,), the (B, k, X + k) mask over the X earlier frontier rows
    (`extra_k`/`extra_v`, (B, X, H, D), or None at the first depth) and the new ones -> the draft's
    outputs (N, h), their log-probs (N, V) in float32, and the new rows' keys and values (N, H, D)."""
    attn = PaddedDraftAttention(past_k, past_v, past_lens, mask, extra=None if extra_k is None else (extra_k, extra_v))
    out = draft(tokens, features, positions, attn)
    # contiguous: the next depth passes them back as `extra`, and a view's strides would compile anew
    return out, draft.logits(out).float().log_softmax(-1), attn.new_k.contiguous(), attn.new_v.contiguous()


def graph_count() -> int:
    """Graphs torch.compile has made in this process so far."""
    return counters["stats"]["unique_graphs"]


class GrowStep:
    """`grow_step`, compiled or eager (module docstring)."""

    def __init__(self, draft: DraftHead, compile: bool):
        self.draft = draft
        if compile:  # every engine's draft shares grow_step's graphs (about four each): room for many
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        self.fn = torch.compile(grow_step, dynamic=True) if compile else grow_step
        self.compile_seconds = 0.0

    @property
    def compiled(self) -> bool:
        return self.fn is not grow_step

    def __call__(self, *args) -> tuple[torch.Tensor, ...]:
        if not self.compiled:
            return grow_step(self.draft, *args)
        # contiguous inputs: an expanded row (batch 1's features and positions) has other strides,
        # and strides are part of what a compiled graph assumes
        args = tuple(a.contiguous() if isinstance(a, torch.Tensor) else a for a in args)
        try:
            # no "duck" sizes: two sizes equal while compiling (the frontier and the rows drafted
            # before it, at the second depth) would be assumed equal ever after, and compile anew
            with fx_config.patch(use_duck_shape=False):
                return self.fn(self.draft, *args)
        except Exception as e:  # noqa: BLE001 - a real error raises again from the eager step below
            log.warning("compiling the draft failed (%s: %s); the draft runs eager", type(e).__name__, e)
            self.fn = grow_step
            return grow_step(self.draft, *args)

    @torch.no_grad()
    def warm_up(self, top_k: int) -> None:
        """Compile the graphs a run needs now (module docstring), on dummy rows."""
        if not self.compiled:
            return
        start, c = time.perf_counter(), self.draft.config
        dev, dtype = self.draft.target.device, self.draft.target.dtype
        for b in (2, 1):
            for extra in (0, 2 * top_k):
                n, rows = b * top_k, lambda m: torch.zeros(b, m, c.num_kv_heads, c.head_dim, device=dev, dtype=dtype)
                mask = torch.ones(b, top_k, extra + top_k, dtype=torch.bool, device=dev)
                self(torch.zeros(n, dtype=torch.long, device=dev), torch.zeros(n, c.hidden_size, device=dev, dtype=dtype),
                     torch.full((n,), 5, device=dev), rows(5), rows(5), torch.full((b,), 5, device=dev), mask,
                     rows(extra) if extra else None, rows(extra) if extra else None)
        self.compile_seconds = time.perf_counter() - start
        if self.compiled:
            log.info("compiled the draft's tree step in %.1fs", self.compile_seconds)
