"""The judge measured on held-out images: greedy judgements through the engine, then

- per aspect PLCC (Pearson) and SRCC (Spearman, ties ranked by their mean) of the parsed score
  against the analytic one; a score the text lacks counts 0 (as in the score reward), and the share
  of well-formed judgements is reported beside;
- heatmaps (run on the judge's own text, as ImageDoctor's inference does): per image Pearson CC of
  each map with its true mask and IoU of the map thresholded at 0.5, averaged over the images whose
  true mask is not empty (a constant prediction has CC 0).
"""

from __future__ import annotations

import numpy as np
import torch

from reasonrl.reward.imagedoctor.build import JudgeItem
from reasonrl.reward.imagedoctor.judgement import ASPECTS, parse_judgement
from reasonrl.reward.imagedoctor.model import TASKS, ImageDoctor, at_size


def pearson(x, y) -> float:
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denom) if denom > 0 else 0.0


def ranks(x) -> np.ndarray:
    """1-based ranks, tied values sharing their mean rank."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    out = np.empty(len(x))
    out[order] = np.arange(1, len(x) + 1)
    for value in np.unique(x):
        tie = x == value
        out[tie] = out[tie].mean()
    return out


def spearman(x, y) -> float:
    return pearson(ranks(x), ranks(y))


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    p, t = pred >= 0.5, truth >= 0.5
    union = (p | t).sum()
    return float((p & t).sum() / union) if union else 1.0


def generate_judgements(doctor: ImageDoctor, tokenizer, items: list[JudgeItem], max_tokens: int = 384) -> list[list[int]]:
    """Greedy response ids per item from the engine, sharing the judge's weights."""
    from reasonrl.engine.llm import LLM
    from reasonrl.engine.sampling_params import SamplingParams

    longest = max(len(it.prompt.input_ids) for it in items) + max_tokens
    llm = LLM(doctor.backbone, tokenizer, max_num_seqs=64, kv_cache_memory="256MiB", max_model_len=longest)
    outs = llm.generate([it.prompt for it in items], SamplingParams(temperature=0.0, max_tokens=max_tokens))
    return [o.outputs[0].token_ids for o in outs]


@torch.no_grad()
def predicted_maps(doctor: ImageDoctor, prompts: list, responses: list[list[int]], sizes: list[tuple[int, int]],
                   batch: int = 8) -> list[np.ndarray]:
    """(2, H, W) maps per prompt from the judge run on it plus its response, resampled to its (H, W) in `sizes`."""
    out = []
    for lo in range(0, len(prompts), batch):
        chunk = list(zip(prompts[lo:lo + batch], responses[lo:lo + batch], sizes[lo:lo + batch]))
        seqs = [list(p.input_ids) + list(r) for p, r, _ in chunk]
        ids = torch.zeros(len(seqs), max(map(len, seqs)), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s)
        _, maps = doctor(ids, [p for p, _, _ in chunk])
        out += [at_size(m.float(), size).numpy() for m, (_, _, size) in zip(maps.maps, chunk)]
    return out


def item_maps(doctor: ImageDoctor, items: list[JudgeItem], responses: list[list[int]]) -> list[np.ndarray]:
    """`predicted_maps` of held items, each at its true masks' size."""
    return predicted_maps(doctor, [it.prompt for it in items], responses, [tuple(it.maps.shape[-2:]) for it in items])


def judge_metrics(doctor: ImageDoctor, tokenizer, items: list[JudgeItem], max_tokens: int = 384) -> dict[str, float]:
    doctor.eval()
    responses = generate_judgements(doctor, tokenizer, items, max_tokens)
    texts = [tokenizer.decode(r) for r in responses]
    parsed = [parse_judgement(t) for t in texts]
    out: dict[str, float] = {"well_formed": float(np.mean([j.well_formed for j in parsed]))}
    for aspect in ASPECTS:
        pred = [j.scores[aspect] if j.scores[aspect] is not None else 0.0 for j in parsed]
        truth = [it.scores[aspect] for it in items]
        out[f"plcc/{aspect}"], out[f"srcc/{aspect}"] = pearson(pred, truth), spearman(pred, truth)
        out[f"parsed/{aspect}"] = float(np.mean([j.scores[aspect] is not None for j in parsed]))
    out["plcc/mean"] = float(np.mean([out[f"plcc/{a}"] for a in ASPECTS]))
    out["srcc/mean"] = float(np.mean([out[f"srcc/{a}"] for a in ASPECTS]))
    out.update(map_metrics(item_maps(doctor, items, responses), items))
    return out


def map_metrics(maps: list[np.ndarray], items: list[JudgeItem]) -> dict[str, float]:
    out = {}
    for k, task in enumerate(TASKS):
        pairs = [(m[k], it.maps[k].numpy()) for m, it in zip(maps, items) if it.maps[k].sum() > 0]
        out[f"cc/{task}"] = float(np.mean([pearson(p, t) for p, t in pairs])) if pairs else 0.0
        out[f"iou/{task}"] = float(np.mean([iou(p, t) for p, t in pairs])) if pairs else 0.0
    return out
