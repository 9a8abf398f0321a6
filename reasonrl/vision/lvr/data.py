"""LVR SFT examples from the shapes world: a question whose region the world knows exactly.

The world's `detail` questions (a small object's stripe colour or texture among distractors) carry
their region of interest (`QAItem.roi`); so do position and count questions that name objects.
The example's latent targets are the merged visual tokens of that region (`sft.roi_tokens`), and
its answer is the boxed answer the shapes environment scores, closed by the end-of-turn token.
"""

from __future__ import annotations

import numpy as np

from reasonrl.engine.latent import LatentConfig
from reasonrl.envs.shapes import INSTRUCTION
from reasonrl.models.qwen2_5_vl.prompt import MultimodalPrompt, build_prompt
from reasonrl.vision.lvr.sft import LVRSequence, lvr_sequence, roi_tokens
from reasonrl.vision.world import QAItem


def lvr_example(tokenizer, model, image: np.ndarray, item: QAItem, latent: LatentConfig) -> tuple[LVRSequence, MultimodalPrompt]:
    """`model`: the Qwen2.5-VL (its vlm_config and image_config); ValueError for a question without a region."""
    if item.roi is None:
        raise ValueError(f"question {item.question!r} ({item.family}) has no region of interest")
    messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                             {"type": "text", "text": f"{item.question} {INSTRUCTION}"}]}]
    prompt = build_prompt(tokenizer, messages, model.vlm_config, model.image_config)
    cfg = model.vlm_config.vision
    roi = roi_tokens(item.roi, image.shape[:2], prompt.image_grid_thw[0], cfg.spatial_merge_size, cfg.patch_size)
    answer = tokenizer.encode(f"\\boxed{{{item.answer}}}") + tokenizer.end_of_turn_ids
    return lvr_sequence(prompt, roi, answer, latent), prompt
