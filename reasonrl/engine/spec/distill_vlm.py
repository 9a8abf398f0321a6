"""Online-logit distillation of a vision-language draft (EagleVLM, SpecVLM §3.5, arXiv 2509.11815).

The loss of distill.py, on rows built the way the engine builds them (engine/spec/visual.py): row
j of a sequence is (x_{j+1}, f_j), a placeholder's x the merged image token the target read, and
each image's rows go through the draft's compressor (Gumbel-softmax selection while training), so
the draft and compressor learn from the context they will draft with. Supervised rows are the text
rows (a row that is an image's, or a compressor's, is context only):

    L = 0.1 * CE(softmax(z_{j+1}), draft_logits_j) + 1.0 * SmoothL1(draft_out_j, f_{j+1})

The target is frozen (no gradient reaches it: its features, logits and image tokens are computed
under no_grad); only the draft layer, its fusion and the compressor train.

The select gate also learns from a supervision of its own (`gate_weight`, `gate_cost`): each
sequence is scored again with every branch forced, and the gate is taught, by cross-entropy, the
branch with the lowest loss once each is charged for its draft visual FLOPs (`_gate_loss`).
Departure: the paper trains the gate only through the Gumbel-softmax, but `text_only` returns no
rows, so a sample that picks it gives the gate no gradient, and nothing makes the compressor
cheaper where the image does not help the draft.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reasonrl.engine.spec.visual import RowSource, catch_up_rows, question_of
from reasonrl.models.model import CausalAttention
from reasonrl.models.qwen2_5_vl.prompt import MultimodalPrompt


def vlm_distillation_loss(draft, ids: torch.Tensor, lengths: torch.Tensor, cfg, generator, prompts: list[MultimodalPrompt | None]):
    """ids (B, T) right-padded, row b beginning with prompts[b] -> (loss, parts)."""
    target = draft.target
    with torch.no_grad():
        feats = target.forward_padded(ids, prompts)  # (B, T, h)
        embeds = [target.encode_images(p.pixel_values, p.image_grid_thw) if p is not None and p.num_images else None
                  for p in prompts]
    inputs = feats
    if cfg.feature_noise:
        noise = torch.rand(feats.shape, generator=generator, device="cpu").to(feats.device, feats.dtype)
        inputs = feats + (2 * noise - 1) * cfg.feature_noise
    sources = [RowSource(ids[b, 1: n].tolist(), inputs[b, : n - 1], 0, prompts[b], embeds[b], str(b))
               for b, n in enumerate(lengths.tolist())]
    ce, l1, top1, _ = _row_losses(draft, sources, ids, feats)
    loss = cfg.logit_weight * ce.mean() + cfg.feature_weight * l1.mean()
    parts = {"ce": ce.mean().item(), "smooth_l1": l1.mean().item(), "top1": top1.float().mean().item()}
    compressor = draft.compressor
    if compressor is not None and compressor.config.mode == "select" and cfg.gate_weight > 0:
        gate_loss, gate_parts = _gate_loss(draft, sources, ids, feats, cfg)
        if gate_loss is not None:
            loss = loss + cfg.gate_weight * gate_loss
            parts.update(gate_parts)
    return loss, parts


def _row_losses(draft, sources: list[RowSource], ids: torch.Tensor, feats: torch.Tensor, reports: dict | None = None):
    """Per supervised (text) row: the cross-entropy to the target's next-token distribution, the
    Smooth L1 to its next feature, whether the top-1 tokens agree, and the row's sequence."""
    rows = catch_up_rows(draft, sources, reports)
    out, token_at = _decode_padded(draft, rows)  # (R, h) over every sample's rows, (R,) their tokens' positions
    batch_of = torch.repeat_interleave(torch.arange(len(sources), device=ids.device), torch.tensor(rows.lengths, device=ids.device))
    keep = token_at >= 0
    keep[keep.clone()] = ids[batch_of[keep], token_at[keep]] != draft.target.vlm_config.image_token_id  # text rows only
    f_next = feats[batch_of[keep], token_at[keep]]  # f_{j+1}
    with torch.no_grad():
        teacher = draft.target.compute_logits(f_next).float().softmax(-1)
    logp = draft.logits(out[keep]).float().log_softmax(-1)
    ce = -(teacher * logp).sum(-1)
    l1 = F.smooth_l1_loss(out[keep].float(), f_next.float(), reduction="none").mean(-1)
    return ce, l1, logp.argmax(-1) == teacher.argmax(-1), batch_of[keep]


def _gate_loss(draft, sources: list[RowSource], ids: torch.Tensor, feats: torch.Tensor, cfg):
    """Supervision for the select gate: each sequence's distillation loss with every branch forced
    (no gradient), each charged for what its visual rows cost the draft; the gate learns, by
    cross-entropy, to pick the cheapest. A branch's charge is its loss times (1 + gate_cost x its
    draft visual FLOPs over those of every visual row), so a branch must save that fraction of the
    loss per image's worth of rows. Without this the gate cannot learn `text_only`, which returns
    no rows: a Gumbel sample that picks it gives the gate no gradient at all, any other only
    whether the chosen branch's rows should weigh more, and nothing compares the branches."""
    compressor, per_row = draft.compressor, draft.flops_per_row()
    with_images = [b for b, s in enumerate(sources) if s.mm is not None and s.image_embeds is not None]
    if not with_images:
        return None, {}
    sources, ids, feats = [sources[b] for b in with_images], ids[with_images], feats[with_images]
    losses, costs = [], []
    with torch.no_grad():
        for branch in compressor.gated:
            reports = {}
            with compressor.force(branch):
                ce, l1, _, seq = _row_losses(draft, sources, ids, feats, reports)
            row = cfg.logit_weight * ce + cfg.feature_weight * l1
            total = torch.zeros(len(sources), device=row.device).index_add_(0, seq, row)
            count = torch.zeros(len(sources), device=row.device).index_add_(0, seq, torch.ones_like(row))
            rel = torch.tensor([reports[s.key].draft_visual_flops / max(reports[s.key].visual_tokens * per_row, 1.0)
                                for s in sources], device=row.device)
            losses.append(total / count.clamp(min=1))
            costs.append(rel)
        best = cheapest(torch.stack(losses, 1), torch.stack(costs, 1), cfg.gate_cost)
    logits = compressor.gate(torch.stack([question_of(draft, s) for s in sources]).to(compressor.gate.weight.dtype))
    loss = F.cross_entropy(logits.float(), best)
    text_only = compressor.gated.index("text_only") if "text_only" in compressor.gated else -1
    return loss, {"gate_ce": loss.item(), "gate_agrees": (logits.argmax(1) == best).float().mean().item(),
                  "gate_text_only_target": (best == text_only).float().mean().item()}


def cheapest(losses: torch.Tensor, costs: torch.Tensor, gate_cost: float) -> torch.Tensor:
    """losses, costs (B, branches): each sequence's loss and relative draft visual FLOPs per branch
    -> (B,) the branch with the lowest charged loss, loss x (1 + gate_cost x cost)."""
    return (losses * (1 + gate_cost * costs)).argmin(1)


def _decode_padded(draft, rows) -> tuple[torch.Tensor, torch.Tensor]:
    """Every sample's rows through the draft layer at once, causal within each sample."""
    b, t, h = len(rows.lengths), max(rows.lengths), rows.x.shape[1]
    x = rows.x.new_zeros(b, t, h)
    pos = rows.positions.new_zeros(*rows.positions.shape[:-1], b, t)
    valid = torch.zeros(b, t, dtype=torch.bool, device=rows.x.device)
    lo = 0
    for i, n in enumerate(rows.lengths):
        x[i, :n], pos[..., i, :n], valid[i, :n] = rows.x[lo: lo + n], rows.positions[..., lo: lo + n], True
        lo += n
    out = draft.decode(x.reshape(b * t, h), pos.reshape(*pos.shape[:-2], b * t), CausalAttention(b, t))
    return out[valid.reshape(-1)], rows.token_at
