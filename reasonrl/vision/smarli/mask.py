"""SMARLI's structured attention mask over [prompt][layout][image], and the two ablations.

Paper: "Layout-Conditioned Autoregressive Text-to-Image Generation via Structured Masking"
(SMARLI, arXiv 2509.12046; no public code; rules from the v2 abstract and paper notes, see
research/vision.md section 3). With True meaning "query row may attend to key column":

1. Global awareness: layout tokens attend to all prompt tokens.
2. Intra-object causality: the tokens of one object attend causally among themselves.
3. Inter-object isolation: layout tokens never attend to another object's layout tokens.
4. Region separation: image tokens attend to all prompt and all image tokens, and to the layout
   tokens of exactly those objects whose box covers the token's cell (in overlaps, all of the
   covering objects).

What the rules leave open, decided here: prompt tokens attend causally among themselves and to
nothing else (Show-o's text); layout tokens attend to no image token; a cell is covered by a box
when they overlap at all (a small box then still owns at least one cell).

Ablations (`rules`):
- "structured": rules 1-4;
- "no_isolation": rules 3 and 4 dropped (the paper's ablation): layout tokens attend causally to
  all earlier layout tokens, image tokens to all layout tokens;
- "causal": one causal mask over the whole sequence, image tokens in raster order.

Padding (a batch pads prompts and layouts to fixed lengths): padded positions are attended by no
one and attend only to themselves, so softmax rows are never empty.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

RULES = ("structured", "no_isolation", "causal")


@dataclass(frozen=True)
class Segments:
    """Where each part of one sequence lies: [prompt (padded to prompt_slots)][layout (padded to
    layout_slots)][image tokens]."""

    prompt_len: int
    """Real prompt tokens (at positions 0..prompt_len-1)."""
    prompt_slots: int
    """Positions reserved for the prompt."""
    object_lens: tuple[int, ...]
    """Layout tokens of each object, in sequence order, from position prompt_slots on."""
    layout_slots: int
    """Positions reserved for the layout."""
    num_image: int
    """Image tokens (the last positions)."""

    def __post_init__(self):
        if self.prompt_len > self.prompt_slots or sum(self.object_lens) > self.layout_slots:
            raise ValueError(f"prompt {self.prompt_len}/{self.prompt_slots} or layout {sum(self.object_lens)}/"
                             f"{self.layout_slots} tokens exceed their slots")

    @property
    def length(self) -> int:
        return self.prompt_slots + self.layout_slots + self.num_image

    def object_of(self) -> torch.Tensor:
        """(L,) object index of each position; -1 outside the layout's real tokens."""
        owner = torch.full((self.length,), -1, dtype=torch.long)
        start = self.prompt_slots
        for i, n in enumerate(self.object_lens):
            owner[start:start + n] = i
            start += n
        return owner


def build_mask(seg: Segments, cover: torch.Tensor, rules: str = "structured") -> torch.Tensor:
    """(L, L) bool attention mask; cover (num_objects, num_image) bool: box of object o covers image token j."""
    if rules not in RULES:
        raise ValueError(f"unknown mask rules {rules!r}; known: {', '.join(RULES)}")
    if tuple(cover.shape) != (len(seg.object_lens), seg.num_image):
        raise ValueError(f"cover must be (objects, image tokens) = {(len(seg.object_lens), seg.num_image)}, "
                         f"got {tuple(cover.shape)}")
    pos = torch.arange(seg.length)
    owner = seg.object_of()
    prompt = pos < seg.prompt_len
    layout = owner >= 0
    image = pos >= seg.prompt_slots + seg.layout_slots
    real = prompt | layout | image
    earlier = pos[None, :] <= pos[:, None]  # key at or before query
    if rules == "causal":
        mask = earlier & real[:, None] & real[None, :]
    else:
        mask = _segmented(seg, cover, rules, prompt, layout, image, owner, earlier)
    return mask | torch.diag(~real)  # padding attends to itself only


def _segmented(seg, cover, rules, prompt, layout, image, owner, earlier) -> torch.Tensor:
    q, k = (lambda m: m[:, None]), (lambda m: m[None, :])  # row (query) and column (key) views
    mask = q(prompt) & k(prompt) & earlier                      # prompt: causal text
    mask |= q(layout) & k(prompt)                               # rule 1
    if rules == "structured":
        mask |= q(layout) & k(layout) & earlier & (q(owner) == k(owner))  # rules 2 and 3
    else:
        mask |= q(layout) & k(layout) & earlier                  # causal over all layout tokens
    mask |= q(image) & (k(prompt) | k(image))                    # rule 4, first half
    if rules == "structured":
        first = seg.prompt_slots + seg.layout_slots
        sees = torch.zeros(seg.num_image, seg.length, dtype=torch.bool)
        for o in range(len(seg.object_lens)):
            sees |= cover[o][:, None] & (owner == o)[None, :]   # rule 4: covering objects only
        mask[first:] |= sees
    else:
        mask |= q(image) & k(layout)
    return mask


def cell_cover(boxes: torch.Tensor, grid: int) -> torch.Tensor:
    """(O, 4) boxes [x0, y0, x1, y1) normalised to [0, 1] -> (O, grid * grid) bool: the box overlaps
    the cell (cells in row-major order)."""
    edges = torch.arange(grid + 1, dtype=torch.float64) / grid
    lo, hi = edges[:-1], edges[1:]
    b = boxes.double()
    cols = (b[:, 0:1] < hi[None]) & (b[:, 2:3] > lo[None])  # (O, grid)
    rows = (b[:, 1:2] < hi[None]) & (b[:, 3:4] > lo[None])
    return (rows[:, :, None] & cols[:, None, :]).reshape(len(boxes), grid * grid)
