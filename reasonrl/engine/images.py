"""Images in the engine: a request's `MultimodalPrompt`, its vision embeddings and its M-RoPE positions.

A request whose prompt is a `MultimodalPrompt` with images (`LLMEngine.add_request`):

- at admission (`admit`) its sequences carry the prompt (`Sequence.mm`) and, as `content_keys`, a
  digest of each image over the image's placeholder tokens: placeholder ids are the same for every
  image, so the prefix cache keys blocks by these digests too (block_manager.py), and two prompts
  share a block only when their images are the same;
- the vision tower runs once per request, in the first step whose prefill chunk holds one of its
  placeholders (a prompt served whole from the prefix cache never runs it), batched over every
  request in that step that needs it (`step_inputs`); the embeddings are kept for preemption,
  re-prefill and the request's other samples, and freed when the request ends (`release`);
- each step's positions are (3, N) M-RoPE rows when a multimodal prompt chunk runs (text rows
  repeat their position), else (N,), a multimodal sequence's tokens past its prompt at
  i + rope_delta; a prefill chunk's placeholder rows take `embeds[k0:k1]`.

SnapKV eviction does not take image requests yet (`check`). Speculative decoding does: tree rows
sit at text positions past the prompt, and the draft reads the merged image tokens (`embeds_of`)
as the input embeddings of its visual rows (engine/spec/speculator.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reasonrl.engine.sequence import Sequence
from reasonrl.models.qwen2_5_vl.prompt import MultimodalPrompt


@dataclass
class _Entry:
    mm: MultimodalPrompt
    embeds: torch.Tensor | None = None  # (K, hidden) on the model's device, once a chunk needed them


class Images:
    def __init__(self, model):
        self.model = model
        self.entries: dict[str, _Entry] = {}  # request id -> its images, while it runs
        self.num_images_encoded = 0
        self.num_encode_batches = 0

    def check(self, request_id: str, mm: MultimodalPrompt, refused: dict[str, bool]) -> None:
        """ValueError naming the problem: a prompt whose parts disagree, or a feature (`refused`:
        name -> on) that cannot take images."""
        cfg = self.model.vlm_config
        on = [name for name, active in refused.items() if active]
        if on:
            raise ValueError(f"request {request_id!r}: {' and '.join(on)} cannot take image requests yet; "
                             "run image prompts on an engine without it")
        grid, merge = mm.image_grid_thw, cfg.vision.spatial_merge_size
        if grid.dim() != 2 or grid.shape[1] != 3 or mm.pixel_values.shape != (int(grid.prod(-1).sum()), cfg.vision.patch_dim):
            raise ValueError(f"request {request_id!r}: pixel_values {tuple(mm.pixel_values.shape)} do not match "
                             f"image_grid_thw {grid.tolist()} (patches of {cfg.vision.patch_dim} values)")
        ids = torch.tensor(mm.input_ids)
        rows = torch.nonzero(ids == cfg.image_token_id).flatten()
        if int(grid.prod(-1).sum()) // merge ** 2 != len(rows) or not torch.equal(rows, mm.image_rows.cpu()):
            raise ValueError(f"request {request_id!r}: the prompt's {len(rows)} image placeholder tokens do not match "
                             f"its images {grid.tolist()} (build it with build_prompt or MultimodalPrompt.from_ids)")
        if tuple(mm.positions.shape) != (3, len(mm.input_ids)):
            raise ValueError(f"request {request_id!r}: positions must be (3, {len(mm.input_ids)}), got "
                             f"{tuple(mm.positions.shape)}")

    def admit(self, request_id: str, mm: MultimodalPrompt, seqs: list[Sequence]) -> None:
        keys = content_keys(mm, self.model.vlm_config.vision.spatial_merge_size)
        for seq in seqs:
            seq.mm, seq.content_keys = mm, keys + seq.content_keys  # after a resumed output's latents' keys
        self.entries[request_id] = _Entry(mm)

    def release(self, request_id: str) -> None:
        self.entries.pop(request_id, None)

    def step_inputs(self, scheduled: list[tuple[Sequence, int]], query_start: list[int],
                    positions: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The step's positions ((N,) in, (3, N) or (N,) out) and the model's image arguments. A
        sequence's rows are query_start[b]:query_start[b + 1] (a draft tree has more rows than its
        scheduled token); rows past the prompt keep the positions they came with, plus rope_delta."""
        spans = [(seq, query_start[b], query_start[b + 1] - query_start[b])
                 for b, (seq, _) in enumerate(scheduled) if seq.mm is not None]
        if not spans:
            return positions, {}
        self._encode([seq for seq, _, n in spans if self._needs_embeds(seq, n)])
        prefilling = [(seq, lo, n) for seq, lo, n in spans if seq.num_computed < len(seq.mm.input_ids)]
        positions = positions.clone()
        for seq, lo, n in spans:
            if seq.num_computed >= len(seq.mm.input_ids):
                positions[lo:lo + n] += seq.mm.rope_delta
        if not prefilling:  # decoding only: text positions
            return positions, {}
        positions = positions.expand(3, -1).clone()
        rows, embeds = [], []
        for seq, lo, n in prefilling:
            start = seq.num_computed
            positions[:, lo:lo + n] = seq.mm.positions_for(start, start + n).to(positions.device)
            chunk_rows, k0, k1 = seq.mm.image_rows_in(start, start + n)
            if k1 > k0:
                rows.append(chunk_rows + lo)
                embeds.append(self.entries[seq.request_id].embeds[k0:k1])
        if not rows:
            return positions, {}
        return positions, {"image_embeds": torch.cat(embeds), "image_rows": torch.cat(rows).to(positions.device)}

    def embeds_of(self, seq: Sequence) -> torch.Tensor:
        """(K, hidden) the merged image tokens of a sequence's prompt, encoded now if no step has
        needed them (a prompt the prefix cache served whole)."""
        entry = self.entries[seq.request_id]
        if entry.embeds is None:
            self._encode([seq])
        return entry.embeds

    def _needs_embeds(self, seq: Sequence, n: int) -> bool:
        _, k0, k1 = seq.mm.image_rows_in(seq.num_computed, seq.num_computed + n)
        return k1 > k0 and self.entries[seq.request_id].embeds is None

    @torch.no_grad()
    def _encode(self, seqs: list[Sequence]) -> None:
        """One vision-tower batch over the images of every request that needs its embeddings now."""
        entries = list({seq.request_id: self.entries[seq.request_id] for seq in seqs}.values())
        if not entries:
            return
        merge = self.model.vlm_config.vision.spatial_merge_size
        out = self.model.encode_images(torch.cat([e.mm.pixel_values for e in entries]),
                                       torch.cat([e.mm.image_grid_thw for e in entries]))
        counts = [int(e.mm.image_grid_thw.prod(-1).sum()) // merge ** 2 for e in entries]
        for entry, part in zip(entries, out.split(counts)):
            entry.embeds = part.clone()  # its own storage: freed with its request, whatever the others do
        self.num_images_encoded += sum(e.mm.num_images for e in entries)
        self.num_encode_batches += 1

    def stats(self) -> dict[str, int]:
        held = list(self.entries.values())
        return {"image_requests": len(held),
                "image_embed_bytes": sum(e.embeds.numel() * e.embeds.element_size() for e in held if e.embeds is not None),
                "image_pixel_bytes": sum(e.mm.pixel_values.numel() * e.mm.pixel_values.element_size() for e in held),
                "images_encoded": self.num_images_encoded, "image_encode_batches": self.num_encode_batches}


def content_keys(mm: MultimodalPrompt, merge: int) -> list[tuple[int, int, bytes]]:
    """(first placeholder, one past the last, the image's digest) per image."""
    keys, row = [], 0
    for (t, h, w), digest in zip(mm.image_grid_thw.tolist(), mm.image_digests):
        start, tokens = int(mm.image_rows[row]), t * h * w // merge ** 2
        keys.append((start, start + tokens, digest))
        row += tokens
    return keys
