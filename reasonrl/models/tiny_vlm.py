"""Tiny Qwen2.5-VL checkpoints, made here: the vision-language sibling of `tiny.py`.

The tokenizer carries Qwen2.5-VL's special tokens in Qwen's order after the ChatML ones, and a chat
template that renders like Qwen2.5-VL's: a default system turn when the chat has none, and each
image content part as `<|vision_start|><|image_pad|><|vision_end|>` (`build_prompt` then widens
the pad to the image's token count). Videos are not rendered.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from reasonrl.models.loader import save_model
from reasonrl.models.qwen2_5_vl.config import ARCHITECTURE, VLMConfig
from reasonrl.models.qwen2_5_vl.model import Qwen2_5_VL
from reasonrl.models.qwen2_5_vl.processor import ImageConfig
from reasonrl.models.tiny import init_weights, make_tokenizer
from reasonrl.models.tokenizer import Tokenizer

VISION_TOKENS = ["<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
                 "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
LVR_TOKENS = ["<|lvr_start|>", "<|lvr|>", "<|lvr_end|>"]  # latent visual reasoning (engine/latent.py)
QWEN_VL_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_vlm_tokenizer(corpus: Iterable[str], vocab_size: int = 512, extra_special_tokens: Iterable[str] = ()) -> Tokenizer:
    """A byte-level BPE tokenizer with ChatML and Qwen2.5-VL special tokens (then `extra_special_tokens`,
    e.g. LVR_TOKENS) and the template above."""
    return make_tokenizer(corpus, vocab_size, [*VISION_TOKENS, *extra_special_tokens], QWEN_VL_TEMPLATE)


def tiny_vlm_config(tokenizer: Tokenizer, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                    num_kv_heads: int = 2, mrope_section: tuple[int, int, int] | None = None, vision_hidden_size: int = 32,
                    vision_depth: int = 2, vision_heads: int = 2, window_size: int = 56,
                    fullatt_block_indexes: tuple[int, ...] = (1,), tie_word_embeddings: bool = True) -> VLMConfig:
    """A config.json in the hub layout; token ids from `tokenizer`. A 56-pixel window is 2 x 2 merged tokens."""
    half = hidden_size // num_heads // 2
    section = mrope_section or (half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8)  # 16/24/24 of 64 in Qwen2.5-VL
    ids = {name: tokenizer.tok.token_to_id(tok) for name, tok in [
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}
    missing = [name for name, i in ids.items() if i is None]
    if missing:
        raise ValueError(f"tokenizer lacks the vision tokens for {missing}; make it with make_vlm_tokenizer")
    return VLMConfig.from_dict({
        "architectures": [ARCHITECTURE], "model_type": "qwen2_5_vl", "vocab_size": tokenizer.vocab_size,
        "hidden_size": hidden_size, "intermediate_size": 3 * hidden_size, "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads, "num_key_value_heads": num_kv_heads, "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": tie_word_embeddings,
        "rope_scaling": {"type": "mrope", "mrope_section": list(section)}, "eos_token_id": list(tokenizer.eos_token_ids),
        "vision_config": {"depth": vision_depth, "hidden_size": vision_hidden_size, "intermediate_size": 2 * vision_hidden_size,
                          "num_heads": vision_heads, "out_hidden_size": hidden_size, "window_size": window_size,
                          "fullatt_block_indexes": list(fullatt_block_indexes)},
        **ids,
    })


def make_vlm_checkpoint(path: str | Path, tokenizer: Tokenizer, seed: int = 0, std: float = 0.02,
                        image_config: ImageConfig | None = None, **sizes) -> Path:
    """Save a randomly initialised tiny Qwen2.5-VL (with tokenizer and preprocessor config) as a checkpoint directory."""
    model = init_weights(Qwen2_5_VL(tiny_vlm_config(tokenizer, **sizes)), std, seed)
    if image_config is not None:
        model.image_config = image_config
    return save_model(model, path, tokenizer)
