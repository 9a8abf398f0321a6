"""A fresh ImageDoctor on a Qwen2.5-VL checkpoint, and the judge's training items.

`doctor_from_vlm` adds the two task tokens to the tokenizer and grows the embedding (and LM head)
by two rows, initialised to the mean row (`reward/prm/model.resize_vocab`, shared with the PRM),
then puts a freshly initialised heatmap head on it. The task tokens are added as ordinary
(non-special) added tokens: they stay atomic, and decoding keeps them, so a rollout's text still
holds them when the reward parses it (the rollout decodes with special tokens skipped).

`NoTaskTokenDoctor` is the ablation "without task tokens" (ImageDoctor's table of ablations): each
map is prompted by a learned query per task instead of the hidden state that emits the task token,
so what the judge wrote cannot steer the map. `ablation.py` puts one on a frozen SFT judge; with
`doctor_from_vlm(..., task_tokens=False)` and `judge_items(..., task_tokens=False)` a whole judge is
trained without the tokens (its text says "Misalignment Locations: map;"), the paper's variant.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from reasonrl.models.chat import ChatEncoder
from reasonrl.models.loader import MASTER_DTYPE, load_model
from reasonrl.models.qwen2_5_vl.prompt import MultimodalPrompt
from reasonrl.models.tokenizer import Tokenizer
from reasonrl.reward.imagedoctor.data import JudgeExample
from reasonrl.reward.imagedoctor.decoder import HeatmapConfig
from reasonrl.reward.imagedoctor.export import judge_messages
from reasonrl.reward.imagedoctor.judgement import TASK_TOKENS, render_judgement, render_scores
from reasonrl.reward.imagedoctor.model import DoctorConfig, Heatmaps, ImageDoctor
from reasonrl.reward.prm.model import resize_vocab

PLAIN_LOCATIONS = ("map", "map")  # the ablation's location fields: no task token


def doctor_from_vlm(path: str, heatmap: HeatmapConfig, heatmap_weight: float = 1.0, task_tokens: bool = True,
                    seed: int = 0) -> tuple[ImageDoctor, Tokenizer]:
    """The VLM at `path` with the task tokens added and a new heatmap head (seeded); the ablation
    (`task_tokens=False`) gets a `NoTaskTokenDoctor` and an unchanged vocabulary."""
    backbone, tokenizer = load_model(path, dtype=MASTER_DTYPE), Tokenizer.from_dir(path)
    if task_tokens:
        ids = add_task_tokens(backbone, tokenizer)
    else:  # ids only name the config's tokens; nothing in the text emits them
        ids = [backbone.config.vocab_size - 2, backbone.config.vocab_size - 1]
    torch.manual_seed(seed)
    cls = ImageDoctor if task_tokens else NoTaskTokenDoctor
    return cls(backbone, DoctorConfig(ids[0], ids[1], heatmap_weight, heatmap)), tokenizer


def add_task_tokens(backbone, tokenizer: Tokenizer) -> list[int]:
    """The ids of TASK_TOKENS, added to the tokenizer (and the embedding grown) where missing."""
    ids = task_token_ids(tokenizer)
    if max(ids) >= backbone.config.vocab_size:
        resize_vocab(backbone, max(ids) + 1)
    return ids


def task_token_ids(tokenizer: Tokenizer) -> list[int]:
    """The ids of TASK_TOKENS, added to the tokenizer alone where missing (the judge's text then
    tokenises as the judge's does, without loading a model)."""
    from tokenizers import AddedToken

    missing = [t for t in TASK_TOKENS if tokenizer.tok.token_to_id(t) is None]
    tokenizer.tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in missing])
    return [tokenizer.tok.token_to_id(t) for t in TASK_TOKENS]


class NoTaskTokenDoctor(ImageDoctor):
    variant = "learned_queries"

    def __init__(self, backbone, cfg: DoctorConfig):
        super().__init__(backbone, cfg)
        self.task_queries = nn.Parameter(torch.randn(2, backbone.config.hidden_size) * 0.02)  # (2, hidden)

    def heatmaps(self, hidden, input_ids, prompts, image_embeds, native: bool = False) -> Heatmaps:
        """Each row's maps prompted by the learned queries, whatever the text: the parent reads the
        state before each task token, so rows (q_mis, q_art, 0) with ids (-1, mis, art) select them."""
        b = hidden.shape[0]
        states = torch.cat([self.task_queries, self.task_queries.new_zeros(1, hidden.shape[2])])[None].expand(b, -1, -1)
        ids = torch.tensor([-1, self.cfg.misalignment_token_id, self.cfg.artifact_token_id],
                           device=input_ids.device).expand(b, -1)
        return super().heatmaps(states, ids, prompts, image_embeds, native)


@dataclass
class JudgeItem:
    """One judged image ready for training: prompt (image included), target text ids, truth."""
    prompt: MultimodalPrompt
    response_ids: list[int]
    maps: torch.Tensor  # (2, H, W) float32: misalignment, artifact
    scores: dict[str, float]
    boxes: list[tuple[int, int, int, int]]
    caption: str
    image: np.ndarray


def judge_items(examples: list[JudgeExample], tokenizer: Tokenizer, model, task_tokens: bool = True) -> list[JudgeItem]:
    encoder = ChatEncoder(tokenizer, model)
    out = []
    for ex in examples:
        maps = torch.from_numpy(np.stack([ex.misalignment, ex.artifact]))
        out.append(JudgeItem(encoder(judge_messages(ex.caption, ex.image)), target_ids(ex, tokenizer, task_tokens),
                             maps, ex.scores, ex.boxes, ex.caption, ex.image))
    return out


def cold_start_items(items: list[JudgeItem], tokenizer: Tokenizer) -> list[JudgeItem]:
    """The same items (prompts shared) with the cold start's target: the four scores alone (`render_scores`)."""
    return [dataclasses.replace(it, response_ids=_response_ids(render_scores(it.scores), tokenizer)) for it in items]


def target_ids(ex: JudgeExample, tokenizer: Tokenizer, task_tokens: bool = True) -> list[int]:
    """The judgement the judge is trained to write for `ex`, end of turn included."""
    text = render_judgement(ex.scores, ex.boxes, " ".join(ex.notes) or "The image matches the caption.",
                            TASK_TOKENS if task_tokens else PLAIN_LOCATIONS)
    return _response_ids(text, tokenizer)


def _response_ids(text: str, tokenizer: Tokenizer) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False) + tokenizer.end_of_turn_ids


def longest_target(examples: list[JudgeExample], tokenizer: Tokenizer) -> int:
    """Tokens of the longest target judgement among `examples` (the task tokens added to `tokenizer`)."""
    task_token_ids(tokenizer)
    return max(len(target_ids(ex, tokenizer)) for ex in examples)
