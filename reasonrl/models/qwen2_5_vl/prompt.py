"""`MultimodalPrompt`: a prompt's token ids with its images, ready for the engine or the trainer.

The chat template writes one `<|image_pad|>` per image; `expand_image_tokens` widens each into as
many placeholders as the image has merged tokens. The prompt then carries everything a forward
needs besides the model: pixel values and grids for the vision tower, the rows whose embeddings
the image tokens replace, and the M-RoPE positions with the delta that continues them.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from reasonrl.models.qwen2_5_vl.config import VLMConfig
from reasonrl.models.qwen2_5_vl.mrope import mrope_positions, text_positions
from reasonrl.models.qwen2_5_vl.processor import ImageConfig, preprocess

REMOTE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")  # http://, file://...: a URL to fetch, not a path


@dataclass
class MultimodalPrompt:
    input_ids: list[int]  # (T,) with every image's placeholder tokens expanded
    pixel_values: torch.Tensor  # (P, patch_dim) float32, all images' patches
    image_grid_thw: torch.Tensor  # (I, 3) long, patches per image (frames, rows, columns)
    positions: torch.Tensor  # (3, T) long M-RoPE positions
    rope_delta: int  # token i >= T sits at position i + rope_delta (all three rows)
    image_rows: torch.Tensor  # (K,) long indices of the placeholder tokens, K = merged image tokens

    @classmethod
    def from_ids(cls, input_ids: Sequence[int], pixel_values: torch.Tensor | None, image_grid_thw: torch.Tensor | None,
                 cfg: VLMConfig) -> MultimodalPrompt:
        """From ids whose placeholders are already expanded (checked against the grids)."""
        ids = torch.as_tensor(list(input_ids), dtype=torch.long)
        grid = image_grid_thw if image_grid_thw is not None else torch.zeros(0, 3, dtype=torch.long)
        pixels = pixel_values if pixel_values is not None else torch.zeros(0, cfg.vision.patch_dim)
        positions, delta = mrope_positions(ids, grid, cfg.image_token_id, cfg.vision.spatial_merge_size)
        rows = torch.nonzero(ids == cfg.image_token_id).flatten()
        return cls(ids.tolist(), pixels, grid, positions, delta, rows)

    @property
    def num_images(self) -> int:
        return self.image_grid_thw.shape[0]

    @functools.cached_property
    def image_digests(self) -> list[bytes]:
        """One digest per image, of its grid and pixel values, computed once (the pixel values must not
        change after): the engine's prefix cache keys image blocks by it, placeholder ids being the
        same for every image."""
        out, start = [], 0
        for t, h, w in self.image_grid_thw.tolist():
            digest = hashlib.blake2b(str((t, h, w)).encode(), digest_size=16)
            digest.update(self.pixel_values[start:start + t * h * w].contiguous().cpu().view(torch.uint8).numpy())
            out.append(digest.digest())
            start += t * h * w
        return out

    def positions_for(self, start: int, stop: int) -> torch.Tensor:
        """(3, stop - start) positions of tokens start..stop-1; past the prompt they continue as text."""
        t = len(self.input_ids)
        inside = self.positions[:, start:min(stop, t)]
        return torch.cat([inside, text_positions(max(start, t), stop, self.rope_delta)], dim=1) if stop > t else inside

    def image_rows_in(self, start: int, stop: int) -> tuple[torch.Tensor, int, int]:
        """Placeholders among tokens start..stop-1: (their indices minus start, k0, k1), where
        embeddings[k0:k1] of the prompt's merged image tokens fill them."""
        k0 = int(torch.searchsorted(self.image_rows, start))
        k1 = int(torch.searchsorted(self.image_rows, stop))
        return self.image_rows[k0:k1] - start, k0, k1


def expand_image_tokens(ids: Sequence[int], image_grid_thw: torch.Tensor, image_token_id: int, merge: int) -> list[int]:
    """Replace the i-th `image_token_id` by t*h*w / merge**2 copies for image i."""
    counts = (image_grid_thw.prod(-1) // merge ** 2).tolist()
    found = sum(1 for i in ids if i == image_token_id)
    if found != len(counts):
        raise ValueError(f"the prompt has {found} image placeholder(s) but {len(counts)} image(s) were given")
    out, k = [], 0
    for i in ids:
        if i == image_token_id:
            out += [i] * counts[k]
            k += 1
        else:
            out.append(i)
    return out


def message_images(messages: list[dict[str, Any]]) -> list[Any]:
    """Images of a chat, in order: content parts {"type": "image", "image": <path|PIL|array|data: URL>}
    and OpenAI's {"type": "image_url", "image_url": {"url": <path|data: URL>}}. A part without a usable
    image is a ValueError naming it (`messages.0.content.1`)."""
    return [_image_of(part, where) for where, part in _image_parts(messages)]


def with_image_parts(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chat with each image_url part as an image part, the kind chat templates render as a placeholder."""
    urls = {id(part): _image_of(part, where) for where, part in _image_parts(messages) if part["type"] == "image_url"}
    if not urls:
        return messages
    return [{**m, "content": [{"type": "image", "image": urls[id(p)]} if id(p) in urls else p for p in m["content"]]}
            if isinstance(m.get("content"), list) else m for m in messages]


def content_parts(messages: list[dict[str, Any]]):
    """(name, part) of each content part given as a dict, named as `messages.0.content.1`."""
    for i, m in enumerate(messages):
        for j, part in enumerate(m.get("content") if isinstance(m, dict) and isinstance(m.get("content"), list) else []):
            if isinstance(part, dict):
                yield f"messages.{i}.content.{j}", part


def _image_parts(messages: list[dict[str, Any]]):
    """(name, part) of each image or image_url part."""
    return ((where, part) for where, part in content_parts(messages) if part.get("type") in ("image", "image_url"))


def _image_of(part: dict, where: str) -> Any:
    if part["type"] == "image_url":  # a path or a data: URL (read by `to_rgb`); nothing is fetched
        spec = part.get("image_url")
        url = spec.get("url") if isinstance(spec, dict) else None
        if not isinstance(url, str):
            raise ValueError(f'{where}: an image_url part is {{"type": "image_url", "image_url": {{"url": a path or '
                             f'a data: URL}}}}, got {str(part)[:80]}')
        if REMOTE.match(url):
            raise ValueError(f"{where}: image URL {url[:40]!r}: only local paths and data: URLs are read (nothing is "
                             "fetched)")
        return url
    image = part.get("image")
    if not isinstance(image, (str, Path, Image.Image, np.ndarray)):
        raise ValueError(f'{where}: an image part needs "image": a path, a PIL image or a uint8 array, got '
                         f"{type(image).__name__} ({str(part)[:80]})")
    return image


def images_prompt(input_ids: Sequence[int], messages: list[dict[str, Any]], cfg: VLMConfig,
                  image_cfg: ImageConfig | None = None) -> MultimodalPrompt:
    """The prompt `build_prompt` gave for `messages`, from its ids (placeholders expanded) and the
    messages' images preprocessed again: a data set keeps each example's images as they came (a path,
    uint8 pixels), not their float patches, and builds these per batch."""
    pixel_values, grid = preprocess(message_images(messages), image_cfg or ImageConfig())
    return MultimodalPrompt.from_ids(input_ids, pixel_values, grid, cfg)


def build_prompt(tokenizer, messages: list[dict[str, Any]], cfg: VLMConfig, image_cfg: ImageConfig | None = None,
                 add_generation_prompt: bool = True, **template_kwargs) -> MultimodalPrompt:
    """Render a chat whose user turns may hold image parts, preprocess the images, expand the placeholders.
    `template_kwargs` go to the chat template."""
    image_cfg = image_cfg or ImageConfig()
    ours = (image_cfg.patch_size, image_cfg.merge_size, image_cfg.temporal_patch_size)
    model = (cfg.vision.patch_size, cfg.vision.spatial_merge_size, cfg.vision.temporal_patch_size)
    if ours != model:
        raise ValueError(f"image config (patch, merge, temporal) sizes {ours} differ from the model's {model}")
    messages = with_image_parts(messages)
    pixel_values, grid = preprocess(message_images(messages), image_cfg)
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, **template_kwargs)
    ids = expand_image_tokens(ids, grid, cfg.image_token_id, cfg.vision.spatial_merge_size)
    return MultimodalPrompt.from_ids(ids, pixel_values, grid, cfg)
