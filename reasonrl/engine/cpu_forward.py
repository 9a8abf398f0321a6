"""The model's forward in one C++ call on CPU, for steps of decode, draft-tree and short prompt rows.

A decode step of a small model on a CPU is mostly dispatch: every layer is a few dozen PyTorch
operations called from Python, each costing microseconds whatever its size, and a batch-1 step
of the demo policy spends most of its time there (docs/benchmarks.md). `CPUForward` runs the
whole forward of such a step (embedding, every layer, the final norm) as one call of
`reasonrl_cpu::decoder_forward` (kernels/csrc/decoder_cpu.cpp): the products with the weights
through ATen (the small-product kernel at up to 4 rows, or 16 for a column-major weight; MKL
above), norms, rotary embedding and
activation as loops over the rows, attention one row at a time over the cache blocks in place,
keys and values written to their slots. The logits, sampling and verification stay as they are.

Which steps: every sequence of the step has at most `MAX_ROWS` rows: one decode row, the rows of a
draft tree (speculative verification, with its tree mask) or a prompt chunk (causal after the
cached context) of at most `MAX_PROMPT_WORK` rows x context. A short prompt's prefill through
PyTorch costs about ten decode steps of the demo policy (1.8 ms for 35 tokens against 0.17 ms a
step, docs/benchmarks.md), nearly all of it dispatch. Longer chunks, and short ones after a long
cached prefix, keep SDPA's blocked attention (the kernel's is a loop over the rows);
steps with image rows (an image prompt's chunks, at M-RoPE positions), latent inputs (LVR's latent
steps), token eviction or a KV format other than dense run the PyTorch forward too. An image
model's other steps (its decode and tree rows are text at one position per row, plain rotary:
Qwen2.5-VL) and a latent engine's token steps run here.
CPU, fp32,
`EngineConfig.cpu_forward_kernel` (on by default); off, or where the library cannot be built,
everything runs as before.

Numerics: the same model to float rounding, not bit for bit (sums in another order than MKL's
and PyTorch's); in a step of up to 4 rows a row's result depends on its own context only, never
on the other rows. Weights are read in place at every call: `load_weights`, a colocated trainer's updates and
weight sync are seen.
"""

from __future__ import annotations

import torch

from reasonrl.engine.attention import AttentionMetadata
from reasonrl.kernels import cpu_ops

MAX_ROWS = 64
"""Most rows of one sequence (a draft tree, root included, or a prompt chunk) a step may run
through the kernel."""

MAX_PROMPT_WORK = 64 * 128
"""Most rows x context length of a prompt chunk the kernel takes: its attention is a loop over the
rows, each over its whole context, which loses to SDPA's blocked kernels once chunks reach about
200 rows from an empty cache (200 x 200, docs/benchmarks.md; 128 x 128 still won); a short chunk
after a long cached prefix (the tail of a chunked prompt, a prefix-cache hit) does the same work
per row as a long one."""


class CPUForward:
    def __init__(self, model, kv):
        self.model, self.kv = model, kv
        self.weights = cpu_ops.decoder_weights(model)
        self.fast_steps = self.eager_steps = 0

    @classmethod
    def build(cls, model, kv, config) -> CPUForward | None:
        """None where it does not apply (switched off, not CPU fp32, a KV format other than dense,
        the library not built)."""
        if not config.cpu_forward_kernel or model.device.type != "cpu" or model.dtype != torch.float32 or \
                kv.name != "dense":
            return None
        fwd = cls(model, kv)
        return fwd if fwd.weights is not None else None

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                model_inputs: dict) -> torch.Tensor | None:
        """Hidden states (rows, h) of a step of at most `MAX_ROWS` rows per sequence, or None: not a
        step this runs. A sequence without a mask is causal over its rows (decode, prompt chunk)."""
        masks = meta.masks or [None] * meta.num_seqs
        runs = not model_inputs and positions.dim() == 1 and all(
            meta.q_len(b) <= MAX_ROWS and (m is not None or meta.q_len(b) == 1 or
                                           meta.q_len(b) * meta.context_lens[b] <= MAX_PROMPT_WORK)
            for b, m in enumerate(masks))
        if not runs:
            self.eager_steps += 1
            return None
        self.fast_steps += 1
        empty = input_ids.new_empty(0, dtype=torch.bool)
        return cpu_ops.decoder_forward_cpu(self.weights, self.model.config, input_ids, positions, self.kv.cache,
                                           meta.slot_mapping, meta.block_tables, meta.query_start, meta.context_lens,
                                           [empty if m is None else m for m in masks])

    def run_dummy(self, rows: int) -> None:
        """One forward of `rows` dummy decode rows (position 0, cache slot 0: only between requests;
        benchmarks time the forward alone with it, as `FastDecode.run_dummy`)."""
        zeros = torch.zeros(rows, dtype=torch.long)
        cpu_ops.decoder_forward_cpu(self.weights, self.model.config, zeros, zeros, self.kv.cache, zeros,
                                    torch.zeros(rows, 1, dtype=torch.int32), list(range(rows + 1)), [1] * rows,
                                    [zeros.new_empty(0, dtype=torch.bool)] * rows)

    def stats(self) -> dict:
        return {"cpu_forward_steps": self.fast_steps, "cpu_forward_eager_steps": self.eager_steps}
