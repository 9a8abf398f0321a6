"""Layouts and their token sequences: a scene becomes [prompt][layout][image] ids for the model.

A layout is what SMARLI conditions on: per object, a box and a region text ("large red circle").
Objects are listed left to right (the caption's order). Each object's layout tokens are its text
tokens followed by one box token (embedded from Fourier features by the model, layout_tokens.py).
The prompt is the world's caption of the scene (world/caption.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reasonrl.models.tokenizer import Tokenizer
from reasonrl.vision.world import Scene, caption
from reasonrl.vision.world.caption import left_to_right

from reasonrl.vision.gen.prompt import object_words

from .mask import Segments, build_mask, cell_cover


@dataclass(frozen=True)
class LayoutObject:
    words: str
    """Region text: 'large red circle'."""
    box: tuple[float, float, float, float]
    """[x0, y0, x1, y1) normalised to [0, 1]."""
    colour: str
    shape: str


@dataclass(frozen=True)
class Layout:
    prompt: str
    objects: tuple[LayoutObject, ...]

    @classmethod
    def of(cls, scene: Scene) -> Layout:
        objs = []
        for i in left_to_right(scene):
            x0, y0, x1, y1 = scene.box(i)
            box = (x0 / scene.width, y0 / scene.height, x1 / scene.width, y1 / scene.height)
            objs.append(LayoutObject(object_words(scene, i), box, scene.objects[i].colour, scene.objects[i].shape))
        return cls(caption(scene), tuple(objs))

    def boxes(self) -> torch.Tensor:
        return torch.tensor([o.box for o in self.objects], dtype=torch.float32).reshape(-1, 4)


@dataclass
class Batch:
    """Everything but the image tokens of a batch of layouts, padded to fixed slots."""

    text_ids: torch.Tensor
    """(B, P + Q) prompt then layout-text ids (0 at box-token and padding positions)."""
    text_pos: torch.Tensor
    """(B, P + Q) position of each text token within its prompt or object."""
    is_box: torch.Tensor
    """(B, Q) bool: layout slot holding a box token."""
    boxes: torch.Tensor
    """(B, Q, 4) the box of each box token (0 elsewhere)."""
    attn: torch.Tensor
    """(B, L, L) bool attention masks."""
    cover: torch.Tensor
    """(B, G * G) bool: image tokens covered by some box (the in-box tokens of layout GRPO)."""


def encode_layouts(layouts: list[Layout], tok: Tokenizer, prompt_slots: int, layout_slots: int, grid: int,
                   rules: str) -> Batch:
    b, n_image = len(layouts), grid * grid
    ids = torch.zeros(b, prompt_slots + layout_slots, dtype=torch.long)
    pos = torch.zeros_like(ids)
    is_box = torch.zeros(b, layout_slots, dtype=torch.bool)
    boxes = torch.zeros(b, layout_slots, 4)
    length = prompt_slots + layout_slots + n_image
    attn = torch.zeros(b, length, length, dtype=torch.bool)
    covered = torch.zeros(b, n_image, dtype=torch.bool)
    for r, lay in enumerate(layouts):
        prompt = tok.encode(lay.prompt, add_special_tokens=False)[:prompt_slots]
        ids[r, :len(prompt)], pos[r, :len(prompt)] = torch.tensor(prompt), torch.arange(len(prompt))
        lens, at = [], prompt_slots
        for obj in lay.objects:
            words = tok.encode(obj.words, add_special_tokens=False)
            if at + len(words) + 1 > prompt_slots + layout_slots:
                raise ValueError(f"layout of {len(lay.objects)} objects needs more than layout_slots={layout_slots}")
            ids[r, at:at + len(words)], pos[r, at:at + len(words) + 1] = torch.tensor(words), torch.arange(len(words) + 1)
            is_box[r, at + len(words) - prompt_slots] = True
            boxes[r, at + len(words) - prompt_slots] = torch.tensor(obj.box)
            lens.append(len(words) + 1)
            at += len(words) + 1
        cover = cell_cover(lay.boxes(), grid)
        attn[r] = build_mask(Segments(len(prompt), prompt_slots, tuple(lens), layout_slots, n_image), cover, rules)
        covered[r] = cover.any(0)
    return Batch(ids, pos, is_box, boxes, attn, covered)
