"""LVR's supervised stage: latent targets from the region of interest, and the loss.

Paper: Latent Visual Reasoning (Li et al., arXiv 2509.24251). An answer is preceded by
`<|lvr_start|>` + N x `<|lvr|>` + `<|lvr_end|>`, N being the merged visual tokens of the image that
the region of interest touches (a 28-pixel cell each in Qwen2.5-VL). Training is teacher-forced:
the input embedding at each `<|lvr|>` position is the matching region token (the frozen vision
tower and merger's output), and the final hidden state at the position before it is regressed
onto that token with MSE (the first from `<|lvr_start|>`'s position). The cross-entropy leaves out
the `<|lvr|>` targets; the total is CE + weight x MSE, weight 0.1.

The hidden state regressed is the final one after the last norm: the state the engine feeds back
in latent mode (engine/latent.py), so training and inference agree. Departures: cells are chosen
by intersection with the box scaled to the resized image (LVR computes the same indices by hand on
the token grid); the vision tower runs without gradients whatever its `requires_grad`; and a
latent scale s (`latent_scale`, recorded in the checkpoint, `LatentConfig.scale`): the hidden
state regresses onto region token / s and the engine feeds back s x hidden state. A final RMS
norm's output has the RMS of its weight whatever its input, so without s its states cannot reach
tokens of another scale (the embedded VLM's merged tokens have RMS 5.5, its final norm 1.24: the
MSE stayed at the level of predicting zeros; docs/vision.md). LVR's Qwen2.5-VL needs s = 1.

Own latents (`latent_inputs="own"`, not in the paper, whose teacher forcing stays the default): the
teacher-forced model reads the answer from perfect latents, but at inference it is fed its own
(exposure bias). With "own", `own_passes` forwards without gradient come first: the first one
teacher-forced, each next one fed the previous one's predictions; a pass's prediction for latent
row r is s x the final hidden state of row r - 1, exactly what the engine feeds back
(`LatentReasoning.intercept`). The graded forward then takes the last pass's predictions, detached,
as the inputs of the latent rows; the loss is unchanged (CE without the latent targets + weight x
MSE to the true region tokens / s). Latent k's prediction depends only on the inputs before it, so
after p passes the inputs of the first p latents of a span are exactly the ones autoregressive
inference produces (p >= the span's length: all of them); each pass costs one more forward.

Pointer loss (`pointer_weight`, not in the paper; for the engine's feedback "image_token",
engine/latent.py, which feeds back the prompt's image token nearest to s x the state by cosine):
cross-entropy over the prompt's merged image tokens, the logits the cosines of s x the predicted state
with each token over a temperature of 0.1, the target latent k's region token. It trains the choice
that feedback makes, where the MSE only pulls the state toward the token. `pointer_target="region"`
makes any of the region's tokens a right answer for every latent (the CE of the region's summed
probability): the latents must find the object, not its cells in row-major order; "remaining", any
region token not fed before it in the span (teacher-forced: region tokens k onwards), so that a
span covers the region instead of repeating one cell. With
`feedback="image_token"` the own passes snap their predictions the same way.

Trained exit (`exit="end_token"`, not in the paper, whose CE leaves the `<|lvr|>` targets out): the CE
also trains them, so every row of a span predicts the next token of the span, `<|lvr|>` while it goes on
and `<|lvr_end|>` after its last latent (the one target LVR's CE already has). The engine's exit
"end_token" (engine/latent.py) then ends a span where the training spans ended, the region's length,
instead of after a fixed quota; without these targets that exit leaves at once (the row of
`<|lvr_start|>` was never taught to continue).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from reasonrl.engine.latent import EXITS, FEEDBACKS, LatentConfig, nearest_token
from reasonrl.models.model import CausalAttention
from reasonrl.models.qwen2_5_vl.prompt import MultimodalPrompt


@dataclass
class LVRSequence:
    input_ids: list[int]  # prompt + start + N latents + end + answer
    latent_rows: list[int]  # positions of the N latent placeholders
    targets: list[int]  # index of each latent's region token among the prompt's merged image tokens
    answer_start: int  # first position whose token is trained with cross-entropy (the start token)


def roi_tokens(box, image_hw: tuple[int, int], grid_thw, merge: int = 2, patch: int = 14) -> list[int]:
    """Row-major indices of the merged tokens whose cells a box [x0, y0, x1, y1) of the original
    image touches; grid_thw is the image's (1, h, w) patch grid after resizing."""
    _, gh, gw = (int(v) for v in grid_thw)
    cell = merge * patch
    sy, sx = gh * patch / image_hw[0], gw * patch / image_hw[1]  # original -> resized pixels
    x0, y0, x1, y1 = box
    c0, c1 = int(x0 * sx // cell), int(-(-(x1 * sx) // cell))
    r0, r1 = int(y0 * sy // cell), int(-(-(y1 * sy) // cell))
    rows, cols = gh // merge, gw // merge
    return [r * cols + c for r in range(max(r0, 0), min(r1, rows)) for c in range(max(c0, 0), min(c1, cols))]


def lvr_sequence(prompt: MultimodalPrompt, roi: list[int], answer_ids: list[int], latent: LatentConfig) -> LVRSequence:
    if not roi:
        raise ValueError("an LVR sequence needs at least one region token")
    n, first = len(roi), len(prompt.input_ids)
    ids = prompt.input_ids + [latent.start_id] + [latent.latent_id] * n + [latent.end_id] + list(answer_ids)
    return LVRSequence(ids, list(range(first + 1, first + 1 + n)), list(roi), first)


def plain_sequence(prompt: MultimodalPrompt, answer_ids: list[int]) -> LVRSequence:
    """The same answer without a latent span: the control LVR compares against (CE only)."""
    return LVRSequence(prompt.input_ids + list(answer_ids), [], [], len(prompt.input_ids))


def latent_scale(model, region_tokens: torch.Tensor) -> float:
    """The scale between region tokens (K, hidden) and the final norm's output: their RMS over the
    RMS of the final norm's weight (the RMS of its output, whatever its input)."""
    weight = model.norm.weight.detach().float()
    return float(region_tokens.detach().float().pow(2).mean().sqrt() / weight.pow(2).mean().sqrt())


LATENT_INPUTS = ("teacher", "own")
POINTER_TEMPERATURE = 0.1
POINTER_TARGETS = ("token", "region", "remaining")


def lvr_sft_loss(model, sequences: list[LVRSequence], prompts: list[MultimodalPrompt], weight: float = 0.1,
                 image_embeds: torch.Tensor | None = None, scale: float = 1.0, latent_inputs: str = "teacher",
                 own_passes: int = 1, pointer_weight: float = 0.0, feedback: str = "state",
                 pointer_target: str = "token", exit: str = "steps"):
    """(CE + weight x MSE, stats) of a batch; each prompt's first image holds its region. `image_embeds`:
    the prompts' merged image tokens already encoded (the frozen tower's output, prompt after prompt).
    `scale`: the latent scale (LatentConfig.scale): the hidden states regress onto targets / scale.
    `latent_inputs`: what the latent rows are fed: "teacher" (the true region tokens, LVR) or "own"
    (the model's own predictions after `own_passes` forwards without gradient; module docstring).
    `pointer_weight`, `pointer_target`: weight and target of the pointer loss, `feedback`: what own passes
    feed back, `exit`: "end_token" trains the `<|lvr|>` targets too (module docstring).
    A batch without latents (`plain_sequence`) has CE alone. stats["input_cosine"]: mean cosine of
    the latent rows' inputs with the true region tokens (1.0 teacher-forced); stats["pointer_top1"]: share
    of latents whose nearest image token is their target (region token k; with target "region" any of the
    region's, with "remaining" any of region tokens k onwards)."""
    if latent_inputs not in LATENT_INPUTS:
        raise ValueError(f"latent_inputs must be one of {', '.join(LATENT_INPUTS)}, got {latent_inputs!r}")
    if feedback not in FEEDBACKS:
        raise ValueError(f"feedback must be one of {', '.join(FEEDBACKS)}, got {feedback!r}")
    if pointer_target not in POINTER_TARGETS:
        raise ValueError(f"pointer_target must be one of {', '.join(POINTER_TARGETS)}, got {pointer_target!r}")
    if exit not in EXITS:
        raise ValueError(f"exit must be one of {', '.join(EXITS)}, got {exit!r}")
    if not isinstance(own_passes, int) or own_passes < 1:
        raise ValueError(f"own_passes must be a positive integer, got {own_passes!r}")
    b, t = len(sequences), max(len(s.input_ids) for s in sequences)
    ids = torch.tensor([s.input_ids + [0] * (t - len(s.input_ids)) for s in sequences], device=model.device)
    with torch.no_grad():
        images = image_embeds if image_embeds is not None else model.encode_images(
            torch.cat([p.pixel_values for p in prompts]), torch.cat([p.image_grid_thw for p in prompts]))
    image_parts, rows, targets, start = [], [], [], 0
    for i, (s, p) in enumerate(zip(sequences, prompts, strict=True)):
        mine = images[start: start + len(p.image_rows)]
        start += len(p.image_rows)
        image_parts.append(mine)
        latent_rows = torch.tensor(s.latent_rows, dtype=torch.long, device=ids.device)
        rows += [i * t + p.image_rows.to(ids.device), i * t + latent_rows]
        targets.append(mine[s.targets])  # the true region tokens: teacher-forced inputs and MSE targets
    rows = torch.cat(rows)
    positions = torch.stack([p.positions_for(0, t) for p in prompts], dim=1).to(model.device)  # (3, B, T)

    def forward(latents: list[torch.Tensor]) -> torch.Tensor:
        """(B, T, hidden): each prompt's image tokens, then `latents[i]` at sequence i's latent rows."""
        embeds = [x for pair in zip(image_parts, latents) for x in pair]
        return model(ids.reshape(-1), positions.reshape(3, -1), CausalAttention(b, t), torch.cat(embeds), rows).view(b, t, -1)

    def predicted(hidden: torch.Tensor) -> torch.Tensor:
        """Final hidden states of the rows before the latent rows, sequence after sequence."""
        return torch.cat([hidden[i, [r - 1 for r in s.latent_rows]] for i, s in enumerate(sequences)])

    inputs, counts = targets, [len(s.latent_rows) for s in sequences]
    if latent_inputs == "own" and any(counts):
        with torch.no_grad():
            for _ in range(own_passes):  # what the engine feeds back: scale x the previous row's final state
                states = (predicted(forward(inputs)) * scale).split(counts)
                inputs = [nearest_token(x, mine) if feedback == "image_token" else x
                          for x, mine in zip(states, image_parts)]
                inputs = [x.to(images.dtype) for x in inputs]
    hidden = forward([x.detach() for x in inputs])
    ce, tokens = _cross_entropy(model, hidden, ids, sequences, latent_targets=exit == "end_token")
    targets, states = torch.cat(targets), predicted(hidden)
    fed = torch.cat(inputs).detach()
    mse = F.mse_loss(states, targets.to(hidden.dtype) / scale) if len(targets) else hidden.new_zeros(())
    pointer, top1 = _pointer_loss(states, counts, image_parts, sequences, pointer_target)
    loss = ce + weight * mse + (pointer_weight * pointer if pointer_weight else 0.0)
    cosine = float(F.cosine_similarity(fed.float(), targets.float(), dim=1).mean()) if len(targets) else float("nan")
    return loss, {"ce": float(ce.detach()), "latent_mse": float(mse.detach()), "tokens": tokens, "input_cosine": cosine,
                  "pointer_ce": float(pointer.detach()), "pointer_top1": top1}


def _pointer_loss(states: torch.Tensor, counts: list[int], images: list[torch.Tensor],
                  sequences: list[LVRSequence], target: str = "token") -> tuple[torch.Tensor, float]:
    """(mean CE of the latents' targets among their prompt's image tokens, logits cosine / 0.1; share of
    latents whose top cosine is their target, or a token equal to it). Target "token": region token k;
    "region": any of the region's tokens (CE of their summed probability); "remaining": any of region
    tokens k onwards. The scale does not change a cosine."""
    if not sum(counts):
        return states.new_zeros(()), float("nan")
    losses, hits = [], 0
    for x, mine, s in zip(states.split(counts), images, sequences):
        if not len(x):
            continue
        logits = F.normalize(x.float(), dim=-1) @ F.normalize(mine.float(), dim=-1).T / POINTER_TEMPERATURE
        region = torch.tensor(s.targets, device=logits.device)
        if target == "token":
            losses.append(F.cross_entropy(logits, region, reduction="sum"))
            hits += int((mine[logits.argmax(-1)] == mine[region]).all(-1).sum())
        else:
            right = torch.ones(len(x), len(region), dtype=torch.bool, device=logits.device)
            if target == "remaining":
                right = right.triu()  # latent k: region tokens k, k + 1, ...
            chosen = logits[:, region].masked_fill(~right, float("-inf"))
            losses.append((logits.logsumexp(-1) - chosen.logsumexp(-1)).sum())
            same = (mine[logits.argmax(-1)][:, None] == mine[region][None]).all(-1)
            hits += int((same & right).any(-1).sum())
    return torch.stack(losses).sum() / sum(counts), hits / sum(counts)


def _cross_entropy(model, hidden: torch.Tensor, ids: torch.Tensor, sequences: list[LVRSequence],
                   latent_targets: bool = False):
    """Mean CE over the targets from each start token on, the latent placeholders left out (kept with
    `latent_targets`)."""
    keep = torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)  # targets (positions of predicted tokens)
    for i, s in enumerate(sequences):
        keep[i, s.answer_start: len(s.input_ids)] = True
        if not latent_targets:
            keep[i, s.latent_rows] = False
    keep[:, 0] = False
    b, rows = torch.nonzero(keep[:, 1:], as_tuple=True)  # row r predicts token r + 1
    logits = model.compute_logits(hidden[b, rows]).float()
    return F.cross_entropy(logits, ids[b, rows + 1]), int(keep.sum())
