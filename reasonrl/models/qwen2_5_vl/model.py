"""`Qwen2_5_VL`: the Qwen2.5-VL vision-language model, a `DecoderLM` with a vision tower.

The language model is the Qwen2 `DecoderLM` itself (this class extends it), with M-RoPE positions
(3, N); everything the engine and trainer do with a text model works unchanged on text-only input.
Images enter in two steps:

1. `encode_images(pixel_values, grid_thw)` runs the vision tower and merger over any number of
   images at once -> (M, hidden) merged tokens, image after image.
2. `forward(input_ids, positions, attn, image_embeds, image_rows)` embeds the tokens, overwrites
   rows `image_rows` with `image_embeds`, and runs the decoder with whatever attention `attn` is
   (padded causal for training, the paged KV cache for the engine).

`forward_padded(input_ids, prompts)` is the training forward: row b of the batch starts with
`prompts[b]` (a `MultimodalPrompt`, or None for a text-only row); the tokens after the prompt
(the response) sit at text positions i + rope_delta, exactly where the engine decoded them.
"""

from __future__ import annotations

import torch

from reasonrl.models.model import Attention, CausalAttention, DecoderLM
from reasonrl.models.qwen2_5_vl.config import VLMConfig
from reasonrl.models.qwen2_5_vl.processor import ImageConfig
from reasonrl.models.qwen2_5_vl.prompt import MultimodalPrompt
from reasonrl.models.qwen2_5_vl.tower import VisionTower


class Qwen2_5_VL(DecoderLM):
    def __init__(self, cfg: VLMConfig, max_len: int | None = None):
        super().__init__(cfg.text, max_len)
        self.vlm_config = cfg
        self.visual = VisionTower(cfg.vision)
        v = cfg.vision  # preprocessing travels with the checkpoint (preprocessor_config.json)
        self.image_config = ImageConfig(patch_size=v.patch_size, merge_size=v.spatial_merge_size,
                                        temporal_patch_size=v.temporal_patch_size)

    def encode_images(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        """pixel_values (P, patch_dim), image_grid_thw (I, 3) -> (P / merge**2, hidden)."""
        return self.visual(pixel_values, image_grid_thw)

    def embed(self, input_ids: torch.Tensor, image_embeds: torch.Tensor | None = None,
              image_rows: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (N,) -> (N, hidden), rows image_rows (K,) replaced by image_embeds (K, hidden)."""
        x = self.embed_tokens(input_ids)
        if image_embeds is None:
            return x
        if image_rows is None or image_rows.shape[0] != image_embeds.shape[0]:
            raise ValueError(f"image_embeds has {image_embeds.shape[0]} rows but image_rows "
                             f"{'is missing' if image_rows is None else f'has {image_rows.shape[0]}'}")
        return x.index_put((image_rows.to(x.device),), image_embeds.to(x.dtype))

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn: Attention,
                image_embeds: torch.Tensor | None = None, image_rows: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (N,), positions (3, N) (or (N,) when all rows are text) -> hidden (N, hidden)."""
        return self.forward_embeds(self.embed(input_ids, image_embeds, image_rows), positions, attn)

    def forward_padded(self, input_ids: torch.Tensor, prompts: list[MultimodalPrompt | None] | None = None,
                       image_embeds: torch.Tensor | None = None,
                       row_embeds: list[tuple[torch.Tensor, torch.Tensor] | None] | None = None) -> torch.Tensor:
        """Training forward: input_ids (B, T) right-padded, row b beginning with prompts[b] -> hidden (B, T, hidden).
        `image_embeds`: the rows' images already encoded (`encode_images` of their pixels, row after row).
        `row_embeds[b]`: (positions (K,) in row b, input embeddings (K, hidden)) put there after the images
        (LVR's replayed latents)."""
        b, t = input_ids.shape
        prompts = prompts or [None] * b
        if len(prompts) != b or any(p is not None and len(p.input_ids) > t for p in prompts):
            raise ValueError(f"need one prompt (or None) per row, each at most {t} tokens: got {len(prompts)} for {b} rows")
        positions = torch.stack([p.positions_for(0, t) if p is not None else torch.arange(t).expand(3, -1)
                                 for p in prompts], dim=1).to(self.device)  # (3, B, T)
        with_images = [(i, p) for i, p in enumerate(prompts) if p is not None and p.num_images]
        embeds = rows = None
        if with_images:
            embeds = image_embeds if image_embeds is not None else self.encode_images(
                torch.cat([p.pixel_values for _, p in with_images]), torch.cat([p.image_grid_thw for _, p in with_images]))
            rows = torch.cat([i * t + p.image_rows for i, p in with_images])
        extra = [(i * t + pos.to(self.device), vec) for i, r in enumerate(row_embeds or []) if r is not None
                 for pos, vec in [r] if len(pos)]
        if extra:
            rows = torch.cat(([rows.to(self.device)] if rows is not None else []) + [r for r, _ in extra])
            embeds = torch.cat(([embeds] if embeds is not None else []) + [v.to(self.device, self.dtype) for _, v in extra])
        hidden = self(input_ids.reshape(-1), positions.reshape(3, -1), CausalAttention(b, t), embeds, rows)
        return hidden.view(b, t, -1)
