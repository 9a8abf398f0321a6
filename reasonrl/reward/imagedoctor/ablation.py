"""The ablation "without task tokens", head-only: two fresh heatmap heads on one frozen SFT judge.

ImageDoctor's ablation retrains the whole judge without task tokens (heatmap CC falls by 0.024
artifact / 0.042 misalignment). Here both heads sit on the same frozen judge (LM and vision tower,
after `reasonrl bench imagedoctor`'s SFT), see the same batches for the same steps with the same
loss (`sft.balanced_heatmap_loss`), and differ only in their prompt: the hidden state that emits
each task token (`ImageDoctor`) or a learned query per task (`NoTaskTokenDoctor`). Both are then
measured on the judge's own greedy judgements of the held-out images. Departure: the LM is not
retrained without task tokens (a full second SFT did not fit the shared CPU's time box); this
isolates what the task token's hidden state gives the map.
"""

from __future__ import annotations

import random

import torch

from reasonrl.reward.imagedoctor.build import JudgeItem, NoTaskTokenDoctor
from reasonrl.reward.imagedoctor.evaluate import JUDGEMENT_TOKENS, generate_judgements, item_maps, map_metrics
from reasonrl.reward.imagedoctor.model import ImageDoctor
from reasonrl.reward.imagedoctor.sft import balanced_heatmap_loss, batch_tensors


def fresh_heads(judge: ImageDoctor, seed: int) -> dict[str, ImageDoctor]:
    judge.backbone.requires_grad_(False)
    torch.manual_seed(seed)
    with_tokens = ImageDoctor(judge.backbone, judge.cfg)
    torch.manual_seed(seed)
    return {"task_tokens": with_tokens, "no_task_tokens": NoTaskTokenDoctor(judge.backbone, judge.cfg)}


def train_heads(heads: dict[str, ImageDoctor], items: list[JudgeItem], steps: int, batch: int, lr: float, pad: int,
                seed: int = 0, log=None) -> None:
    """Each head trained on the same batches; the backbone's forward is shared (it is frozen)."""
    backbone = next(iter(heads.values())).backbone
    optims = {k: torch.optim.AdamW([p for n, p in h.named_parameters() if not n.startswith("backbone.")], lr=lr)
              for k, h in heads.items()}
    rng = random.Random(seed)
    for step in range(1, steps + 1):
        chunk = rng.sample(items, min(batch, len(items)))
        ids, _ = batch_tensors(chunk, pad)
        prompts = [it.prompt for it in chunk]
        with torch.no_grad():
            embeds = backbone.encode_images(torch.cat([p.pixel_values for p in prompts]),
                                            torch.cat([p.image_grid_thw for p in prompts]))
            hidden = backbone.forward_padded(ids, prompts, embeds)
        for name, head in heads.items():
            loss = balanced_heatmap_loss(head.heatmaps(hidden, ids, prompts, embeds), [it.maps for it in chunk], 1.0)
            optims[name].zero_grad(set_to_none=True)
            loss.backward()
            optims[name].step()
            if log is not None and (step % 10 == 0 or step == steps):
                log(f"head ablation step {step}/{steps} {name} loss {float(loss.detach()):.4f}")


def head_ablation(judge: ImageDoctor, tokenizer, train: list[JudgeItem], held: list[JudgeItem], steps: int,
                  batch: int = 16, lr: float = 3e-3, seed: int = 0, max_tokens: int = JUDGEMENT_TOKENS,
                  log=None) -> dict:
    heads = fresh_heads(judge, seed)
    train_heads(heads, train, steps, batch, lr, tokenizer.pad_token_id, seed, log)
    responses = generate_judgements(judge, tokenizer, [it.prompt for it in held], max_tokens)
    out = {"steps": steps, "judge_head": map_metrics(item_maps(judge, held, responses), held)}
    for name, head in heads.items():
        out[name] = map_metrics(item_maps(head.eval(), held, responses), held)
    return out
