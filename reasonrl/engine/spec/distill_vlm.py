"""Online-logit distillation of a vision-language draft (EagleVLM, SpecVLM §3.5, arXiv 2509.11815).

The loss of distill.py, on rows built the way the engine builds them (engine/spec/visual.py): row
j of a sequence is (x_{j+1}, f_j), a placeholder's x the merged image token the target read, and
each image's rows go through the draft's compressor (Gumbel-softmax selection while training), so
the draft and compressor learn from the context they will draft with. Supervised rows are the text
rows (a row that is an image's, or a compressor's, is context only):

    L = 0.1 * CE(softmax(z_{j+1}), draft_logits_j) + 1.0 * SmoothL1(draft_out_j, f_{j+1})

The target is frozen (no gradient reaches it: its features, logits and image tokens are computed
under no_grad); only the draft layer, its fusion and the compressor train.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reasonrl.engine.spec.visual import RowSource, catch_up_rows
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
    rows = catch_up_rows(draft, sources)
    out, token_at = _decode_padded(draft, rows)  # (R, h) over every sample's rows, (R,) their tokens' positions
    batch_of = torch.repeat_interleave(torch.arange(len(sources), device=ids.device), torch.tensor(rows.lengths, device=ids.device))
    image_token = target.vlm_config.image_token_id
    keep = token_at >= 0
    keep[keep.clone()] = ids[batch_of[keep], token_at[keep]] != image_token  # text rows only
    f_next = feats[batch_of[keep], token_at[keep]]  # f_{j+1}
    with torch.no_grad():
        teacher = target.compute_logits(f_next).float().softmax(-1)
    logp = draft.logits(out[keep]).float().log_softmax(-1)
    ce = -(teacher * logp).sum(-1).mean()
    l1 = F.smooth_l1_loss(out[keep].float(), f_next.float())
    top1 = (logp.argmax(-1) == teacher.argmax(-1)).float().mean()
    loss = cfg.logit_weight * ce + cfg.feature_weight * l1
    return loss, {"ce": ce.item(), "smooth_l1": l1.item(), "top1": top1.item()}


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
