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

from reasonrl.models.qwen2_5_vl.prompt import MultimodalPrompt


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
class RowSource:
    """One sequence's tokens start+1 .. end and what the draft's rows for them need."""

    ids: list[int]  # token ids of positions start+1 .. end
    features: torch.Tensor  # (end - start, h) the target's features of positions start .. end - 1
    start: int
    mm: MultimodalPrompt | None = None
    image_embeds: torch.Tensor | None = None  # (K, h) every merged image token of the prompt
    key: str = ""  # request id, for the visual report

    @property
    def end(self) -> int:
        return self.start + len(self.ids)


@dataclass
class CatchUpRows:
    x: torch.Tensor  # (N, h) fused rows of every sequence, in order
    positions: torch.Tensor  # (N,) or (3, N)
    lengths: list[int]  # rows per sequence
    removed: list[int]  # tokens per sequence whose rows the compressor took away
    token_at: torch.Tensor  # (N,) the position of each row's token, -1 for a compressor's row


def catch_up_rows(draft, sources: list[RowSource], reports: dict[str, VisualReport] | None = None) -> CatchUpRows:
    """The draft's rows for each source's tokens, visual ones as the target read them, each whole
    image compressed when the draft has a compressor (module docstring)."""
    dev = draft.target.device
    ids, pos, img_embeds, img_rows = [], [], [], []
    for src in sources:
        lo = len(ids)
        ids += src.ids
        if src.mm is None:
            pos.append(torch.arange(src.start + 1, src.end + 1))
            continue
        pos.append(src.mm.positions_for(src.start + 1, src.end + 1))
        rows, k0, k1 = src.mm.image_rows_in(src.start + 1, src.end + 1)
        if k1 > k0 and src.image_embeds is not None:
            img_embeds.append(src.image_embeds[k0:k1])
            img_rows.append(rows + lo)
    ids_t = torch.tensor(ids, device=dev)
    embeds = draft.embed(ids_t, torch.cat(img_embeds), torch.cat(img_rows).to(dev)) if img_embeds else draft.embed(ids_t)
    x = draft.fuse(embeds, torch.cat([src.features for src in sources]))
    three = any(p.dim() == 2 for p in pos)
    pos = [p.to(dev).expand(3, -1) if three and p.dim() == 1 else p.to(dev) for p in pos]
    token_at = torch.cat([torch.arange(src.start + 1, src.end + 1) for src in sources]).to(dev)
    lengths = [len(src.ids) for src in sources]
    if not img_embeds:
        return CatchUpRows(x, torch.cat(pos, -1), lengths, [0] * len(sources), token_at)
    return _compress(draft, sources, x, pos, token_at, reports)


def _compress(draft, sources, x: torch.Tensor, pos: list[torch.Tensor], token_at: torch.Tensor, reports) -> CatchUpRows:
    """Each whole image of each source through the compressor (if the draft has one, and reported
    either way); the other rows as they are."""
    parts, lengths, removed, lo = [], [], [], 0
    for src, p in zip(sources, pos):
        n = len(src.ids)
        part = (x[lo: lo + n], p, token_at[lo: lo + n])
        if src.mm is not None and src.image_embeds is not None:
            *part, report = _compress_images(draft, src, *part)
            if reports is not None and report.visual_tokens:
                reports[src.key] = report
                while len(reports) > MAX_REPORTS:
                    reports.pop(next(iter(reports)))
        parts.append(part)
        lengths.append(part[0].shape[0])
        removed.append(n - part[0].shape[0])
        lo += n
    return CatchUpRows(torch.cat([q[0] for q in parts]), torch.cat([q[1] for q in parts], -1), lengths, removed,
                       torch.cat([q[2] for q in parts]))


def _compress_images(draft, src: RowSource, rows: torch.Tensor, pos: torch.Tensor, token_at: torch.Tensor):
    """rows (n, h) for tokens start+1 ..; pos (3, n); token_at (n,) -> the same with every whole image
    compressed, and the report."""
    spans = _image_spans(draft, src)
    question = _question(src, spans) if draft.compressor is not None else None
    out, report, at = [], VisualReport(), 0
    for a, b in spans:
        out.append((rows[at:a], pos[:, at:a], token_at[at:a]))
        if draft.compressor is None:  # EagleVLM: every visual row, at its own position
            squeezed, branch, flops = rows[a:b], "none", 0.0
            out.append((squeezed, pos[:, a:b], token_at[a:b]))
        else:
            squeezed, branch = draft.compressor(rows[a:b], question)
            flops = draft.compressor.flops(b - a, branch)
            k = squeezed.shape[0]
            out.append((squeezed, pos[:, a:a + 1].expand(-1, k), torch.full((k,), -1, device=rows.device)))
        report.visual_tokens += b - a
        report.draft_visual_tokens += squeezed.shape[0]
        report.draft_visual_flops += flops + squeezed.shape[0] * draft.flops_per_row()
        report.branches += (branch,)
        at = b
    out.append((rows[at:], pos[:, at:], token_at[at:]))
    return torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out], -1), torch.cat([o[2] for o in out]), report


def _image_spans(draft, src: RowSource) -> list[tuple[int, int]]:
    """The row ranges of the images that lie whole in the source's rows."""
    from reasonrl.engine.images import content_keys

    merge = draft.target.vlm_config.vision.spatial_merge_size
    spans = [(a - src.start - 1, b - src.start - 1) for a, b, _ in content_keys(src.mm, merge)]
    return [(a, b) for a, b in spans if a >= 0 and b <= len(src.ids)]


def _question(src: RowSource, spans: list[tuple[int, int]]) -> torch.Tensor:
    """What the gate reads: the mean of the target's features over the prompt's text rows (what
    is asked, as the target understood it)."""
    text = torch.zeros(len(src.ids), dtype=torch.bool, device=src.features.device)
    text[: max(len(src.mm.input_ids) - src.start - 1, 0)] = True
    for a, b in spans:
        text[a:b] = False
    return src.features[text].mean(0) if text.any() else src.features.mean(0)


def question_of(draft, src: RowSource) -> torch.Tensor:
    """The gate's input for a source whose images lie whole in its rows."""
    return _question(src, _image_spans(draft, src))
