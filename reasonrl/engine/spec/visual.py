"""The draft's input rows for a catch-up, visual tokens included: EagleVLM (SpecVLM §3.3, arXiv 2509.11815).

A draft row j is (x_{j+1}, f_j): the embedding of token j + 1 and the target's feature at j. For
a vision-language target, a row whose token is an image placeholder takes the merged image token
the target itself read there (its vision tower's output, `Images.embeds_of`), so the draft runs
on visual tokens as well as text, with the target's M-RoPE positions (3, n).

With an elastic visual compressor on the draft (compressor.py), each image that lies whole in the
catch-up is replaced, in the draft's context only, by the compressor's rows: the fused rows of
its K placeholders become K' rows (K' = 0 for the text-only branch), all at the image's first
position. The gate of the compressor reads the mean of the target's features over the prompt's
text rows of the catch-up (the question, already informed by the image). The target never sees
any of this, so verification stays lossless.

Departures: the paper compresses the draft's visual input embeddings; here the compressor acts on
the draft's fused rows FC([norm(e), norm(f)]), so the target's features at the image are
compressed along with the embeddings (one operator, no separate feature alignment). An image cut
by the start of a draft context (a context restarted mid-prompt) is kept uncompressed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reasonrl.engine.sequence import Sequence


MAX_REPORTS = 4096
"""Visual reports kept (the newest requests')."""


@dataclass
class VisualReport:
    """What the draft did with one request's images."""

    visual_tokens: int = 0  # merged image tokens the target reads
    draft_visual_tokens: int = 0  # rows the draft keeps for them
    draft_visual_flops: float = 0.0  # the draft's (and compressor's) FLOPs on its visual rows, prefill
    branches: tuple[str, ...] = ()  # the compressor's choice per image (select mode)


@dataclass
class CatchUpRows:
    x: torch.Tensor  # (N, h) fused rows of every sequence, in order
    positions: torch.Tensor  # (N,) or (3, N)
    lengths: list[int]  # rows per sequence
    removed: list[int]  # tokens per sequence whose rows the compressor took away


def catch_up_rows(draft, items: list[tuple[Sequence, int, int, torch.Tensor]], images=None,
                  reports: dict[str, VisualReport] | None = None) -> CatchUpRows:
    """items: (seq, start, end, features (end - start, h)) -> the rows for tokens start+1 .. end of
    each sequence (features of positions start .. end - 1)."""
    dev = draft.target.device
    ids, feats, pos, img_embeds, img_rows = [], [], [], [], []
    for seq, start, end, f in items:
        lo = len(ids)
        ids += seq.tokens(start + 1, end + 1)
        feats.append(f)
        if seq.mm is None:
            pos.append(torch.arange(start + 1, end + 1))
            continue
        pos.append(seq.mm.positions_for(start + 1, end + 1))
        rows, k0, k1 = seq.mm.image_rows_in(start + 1, end + 1)
        if k1 > k0 and images is not None:
            img_embeds.append(images.embeds_of(seq)[k0:k1])
            img_rows.append(rows + lo)
    ids_t = torch.tensor(ids, device=dev)
    embeds = draft.embed(ids_t, torch.cat(img_embeds), torch.cat(img_rows).to(dev)) if img_embeds else draft.embed(ids_t)
    x = draft.fuse(embeds, torch.cat(feats))
    three = any(p.dim() == 2 for p in pos)
    pos = [p.to(dev).expand(3, -1) if three and p.dim() == 1 else p.to(dev) for p in pos]
    if not img_embeds:
        return CatchUpRows(x, torch.cat(pos, -1), [end - start for _, start, end, _ in items], [0] * len(items))
    return _compress(draft, items, x, pos, reports)


def _compress(draft, items, x: torch.Tensor, pos: list[torch.Tensor], reports) -> CatchUpRows:
    """Each whole image of each sequence through the compressor (if the draft has one, and
    reported either way); the other rows as they are."""
    parts_x, parts_pos, lengths, removed, lo = [], [], [], [], 0
    for (seq, start, end, f), p in zip(items, pos):
        n = end - start
        rows, ps = x[lo: lo + n], p
        if seq.mm is not None:
            rows, ps, report = _compress_images(draft, seq, start, rows, ps, f)
            if reports is not None and report.visual_tokens:
                reports[seq.request_id] = report
                while len(reports) > MAX_REPORTS:
                    reports.pop(next(iter(reports)))
        parts_x.append(rows)
        parts_pos.append(ps)
        lengths.append(rows.shape[0])
        removed.append(n - rows.shape[0])
        lo += n
    return CatchUpRows(torch.cat(parts_x), torch.cat(parts_pos, -1), lengths, removed)


def _compress_images(draft, seq: Sequence, start: int, rows: torch.Tensor, pos: torch.Tensor,
                     features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, VisualReport]:
    """rows (n, h) for tokens start+1 ..; pos (3, n) -> the same with every whole image compressed."""
    from reasonrl.engine.images import content_keys

    merge = draft.target.vlm_config.vision.spatial_merge_size
    spans = [(a - start - 1, b - start - 1) for a, b, _ in content_keys(seq.mm, merge)]
    spans = [(a, b) for a, b in spans if a >= 0 and b <= rows.shape[0]]
    text = torch.ones(rows.shape[0], dtype=torch.bool, device=rows.device)
    prompt_rows = len(seq.mm.input_ids) - start - 1  # rows of prompt tokens
    text[max(prompt_rows, 0):] = False
    for a, b in spans:
        text[a:b] = False
    question = None
    if draft.compressor is not None:
        question = features[text].mean(0) if text.any() else features.mean(0)
    out_x, out_pos, report, at = [], [], VisualReport(), 0
    for a, b in spans:
        out_x.append(rows[at:a])
        out_pos.append(pos[:, at:a])
        if draft.compressor is None:  # EagleVLM: every visual row, at its own position
            squeezed, branch, flops = rows[a:b], "none", 0.0
            out_pos.append(pos[:, a:b])
        else:
            squeezed, branch = draft.compressor(rows[a:b], question)
            flops = draft.compressor.flops(b - a, branch)
            out_pos.append(pos[:, a:a + 1].expand(-1, squeezed.shape[0]))
        out_x.append(squeezed)
        report.visual_tokens += b - a
        report.draft_visual_tokens += squeezed.shape[0]
        report.draft_visual_flops += flops + squeezed.shape[0] * draft.flops_per_row()
        report.branches += (branch,)
        at = b
    out_x.append(rows[at:])
    out_pos.append(pos[:, at:])
    return torch.cat(out_x), torch.cat(out_pos, -1), report
