"""Qwen2.5-VL: vision tower, image preprocessing, M-RoPE positions, and the VLM on `DecoderLM`.

Checkpoints load and save through `reasonrl.models.load_model` / `save_model` like text models.
"""

from reasonrl.models.qwen2_5_vl.config import VisionConfig, VLMConfig
from reasonrl.models.qwen2_5_vl.model import Qwen2_5_VL
from reasonrl.models.qwen2_5_vl.mrope import mrope_positions, text_positions
from reasonrl.models.qwen2_5_vl.processor import ImageConfig, preprocess, smart_resize
from reasonrl.models.qwen2_5_vl.prompt import MultimodalPrompt, build_prompt, expand_image_tokens

__all__ = ["ImageConfig", "MultimodalPrompt", "Qwen2_5_VL", "VLMConfig", "VisionConfig", "build_prompt",
           "expand_image_tokens", "mrope_positions", "preprocess", "smart_resize",
           "text_positions"]
