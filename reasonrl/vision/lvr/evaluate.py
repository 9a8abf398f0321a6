"""LVR measured: accuracy through the engine's latent mode, the causality check, reconstruction.

Every figure is greedy decoding by the engine (engine/latent.py) on held-out detail questions:

- `accuracy`: the model answers as it would be served, latent mode on (or off for the control);
- the causality check (`intervened`): each output is cut right after its first latent span, the
  span's latents are replaced (zeros; Gaussian noise with each latent's norm; tokens of the same
  image drawn at random, "random_tokens"; or the true region tokens, the "oracle", the span re-sized
  to the region's tokens) and the
  answer is decoded again from there, through the engine's resume path (`output_latents`); a model
  whose answers depend on its latents loses accuracy when they are zeros or noise;
- `reconstruction`: cosine of the k-th latent with the region's k-th merged visual token (the
  LVR training target), beside the cosine a constant guess gets (the image's mean token), and the
  share of latents whose nearest image token (by cosine) is that region token ("latent_top1"; with
  feedback image_token the latent is that nearest token), or any of the region's tokens
  ("latent_in_region", every latent of the span).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from reasonrl.engine.config import EngineConfig
from reasonrl.engine.latent import LatentConfig, Latents, nearest_token
from reasonrl.engine.llm_engine import LLMEngine
from reasonrl.engine.sampling_params import SamplingParams
from reasonrl.engine.sequence import CompletionOutput
from reasonrl.models.qwen2_5_vl.prompt import MultimodalPrompt

GREEDY = SamplingParams(temperature=0.0, max_tokens=32, detokenize=False)


@dataclass
class EvalItem:
    prompt: MultimodalPrompt  # with its pixels: the engine encodes the image
    answer: Callable[[str], float]  # the reward's accuracy part on a decoded response
    region: torch.Tensor  # (N, hidden) the region's merged visual tokens (the latent targets)
    image: torch.Tensor  # (M, hidden) all the image's merged tokens


def engine(model, tok, latent_steps: int | None) -> LLMEngine:
    cfg = EngineConfig(kv_cache_memory=256 << 20, max_num_seqs=64, max_model_len=512)
    latent = LatentConfig.for_model(model, tok, steps=latent_steps) if latent_steps else None
    return LLMEngine(model, tok, cfg, latent=latent)


def generate(model, tok, items: list[EvalItem], latent_steps: int | None,
             resume: list[tuple[list[int], Latents]] | None = None) -> list[CompletionOutput]:
    """Greedy outputs of every item (resumed from `resume[i]`'s tokens and latents when given)."""
    eng = engine(model, tok, latent_steps)
    for i, item in enumerate(items):
        kw = {}
        if resume is not None and resume[i] is not None:
            ids, lat = resume[i]
            kw = {"output_ids": ids, "output_logprobs": [0.0] * len(ids), "output_latents": lat}
        eng.add_request(str(i), item.prompt, GREEDY, **kw)
    outs = eng.drain()
    return [outs[str(i)].outputs[0] for i in range(len(items))]


def accuracy(tok, items: list[EvalItem], outs: list[CompletionOutput]) -> float:
    return sum(item.answer(tok.decode(o.token_ids, skip_special_tokens=False)) > 0
               for item, o in zip(items, outs)) / max(len(items), 1)


def first_span(out: CompletionOutput) -> tuple[int, int] | None:
    """(index of the first latent, index after the span's last latent) of an output, or None."""
    if out.latents is None or not out.latents.positions:
        return None
    pos, k = out.latents.positions, 1
    while k < len(pos) and pos[k] == pos[k - 1] + 1:
        k += 1
    return pos[0], pos[k - 1] + 1


def intervened(model, tok, items: list[EvalItem], outs: list[CompletionOutput], kind: str, latent: LatentConfig,
               seed: int = 0) -> tuple[float, float]:
    """(accuracy, share of items intervened on) after `replace_span` and decoding on from there; the
    engine's quota is raised to the longest span (an oracle span has the region's length)."""
    resume = replace_span(items, outs, kind, latent, torch.Generator().manual_seed(seed))
    steps = max([latent.steps] + [len(r[1].positions) for r in resume if r is not None])
    again = generate(model, tok, items, steps, resume)
    return accuracy(tok, items, again), sum(r is not None for r in resume) / max(len(items), 1)


INTERVENTIONS = ("zeros", "noise", "random_tokens", "oracle")


def span_length(items: list[EvalItem], outs: list[CompletionOutput]) -> dict[str, float]:
    """Mean latents in an output's first span (0 without one), and the share of outputs whose span is
    as long as their region (the training span; with exit "end_token" the model chooses the length)."""
    lengths = [(s[1] - s[0]) if (s := first_span(o)) else 0 for o in outs]
    return {"latent_span": sum(lengths) / max(len(lengths), 1),
            "span_is_region": sum(n == len(it.region) for n, it in zip(lengths, items)) / max(len(items), 1)}


def replace_span(items: list[EvalItem], outs: list[CompletionOutput], kind: str, latent: LatentConfig,
                 gen: torch.Generator) -> list[tuple[list[int], Latents] | None]:
    """Per output, the tokens up to its first span's end and the span's latents replaced: kind
    "zeros", "noise" (Gaussian, each latent's norm), "random_tokens" (tokens of the item's image,
    uniformly drawn) or "oracle" (the region's tokens, the span re-sized to them); None for an
    output without a span."""
    if kind not in INTERVENTIONS:
        raise ValueError(f"unknown intervention {kind!r}; known: {', '.join(INTERVENTIONS)}")
    resume = []
    for item, out in zip(items, outs):
        span = first_span(out)
        if span is None:
            resume.append(None)
            continue
        lo, hi = span
        vectors = out.latents.vectors[:hi - lo]
        if kind == "zeros":
            vectors = torch.zeros_like(vectors)
        elif kind == "noise":
            noise = torch.randn(vectors.shape, generator=gen)
            vectors = noise / noise.norm(dim=1, keepdim=True) * vectors.norm(dim=1, keepdim=True)
        elif kind == "random_tokens":
            vectors = item.image[torch.randint(len(item.image), (len(vectors),), generator=gen)]
        else:
            vectors = item.region
        ids = out.token_ids[:lo] + [latent.latent_id] * len(vectors) + [latent.end_id]
        resume.append((ids, Latents(list(range(lo, lo + len(vectors))), vectors)))
    return resume


def reconstruction(items: list[EvalItem], outs: list[CompletionOutput]) -> dict[str, float]:
    """Mean cosine of latent k with region token k (k < both counts), of the image's mean token
    with the same region tokens (the constant guess), and the share of latents whose nearest image
    token is region token k (or a token equal to it), or any of the region's (every latent of the span)."""
    ours, guess, top1, inside = [], [], [], []
    for item, out in zip(items, outs):
        span = first_span(out)
        if span is None:
            continue
        n = min(span[1] - span[0], len(item.region))
        latents, region = out.latents.vectors[:n], item.region[:n]
        ours.append(F.cosine_similarity(latents, region, dim=1))
        guess.append(F.cosine_similarity(item.image.mean(0)[None].expand(n, -1), region, dim=1))
        pointed = nearest_token(out.latents.vectors[:span[1] - span[0]], item.image)  # every latent of the span
        top1.append((pointed[:n] == region).all(-1).float())
        inside.append((pointed[:, None] == item.region[None]).all(-1).any(-1).float())
    if not ours:
        return {"latent_cosine": float("nan"), "mean_token_cosine": float("nan"), "latent_top1": float("nan"),
                "latent_in_region": float("nan"), "latent_outputs": 0.0}
    return {"latent_cosine": float(torch.cat(ours).mean()), "mean_token_cosine": float(torch.cat(guess).mean()),
            "latent_top1": float(torch.cat(top1).mean()), "latent_in_region": float(torch.cat(inside).mean()),
            "latent_outputs": len(ours) / len(items)}
