"""Shared pieces of the Qwen2.5-VL tests: tiny transformers references, test images and prompts,
and the logits of a (right-padded) batch of prompts from either implementation."""

import numpy as np
import torch
from PIL import Image

from reasonrl.models.qwen2_5_vl import ImageConfig, MultimodalPrompt, build_prompt

CORPUS = ["The quick brown fox jumps over the lazy dog. 12 + 30 = 42.", "What is in the picture? A red circle.",
          "Describe both images and compare them.", "How many squares are there?"] * 20
IMAGE_CFG = ImageConfig(max_pixels=28 * 28 * 64)
SIZES = [(56, 84), (150, 150), (30, 200)]  # (H, W): wide, square spanning partial windows, very wide


def noise_image(h, w, seed=0, mode="RGB"):
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    a = np.random.RandomState(seed).randint(0, 256, (h, w, channels), dtype=np.uint8)
    return Image.fromarray(a[..., 0] if mode == "L" else a, mode)


def images_prompt(tok, cfg, sizes=SIZES, seed=0):
    """A chat with one image per size, text before, between and after them."""
    parts = [{"type": "text", "text": "Describe both images and compare them."}]
    for i, (h, w) in enumerate(sizes):
        parts += [{"type": "image", "image": noise_image(h, w, seed + i)}, {"type": "text", "text": f"image {i} and"}]
    return build_prompt(tok, [{"role": "user", "content": parts}], cfg, IMAGE_CFG)


def hf_logits(hf, prompts, t=None):
    """transformers' logits for right-padded prompts (MultimodalPrompt or plain id lists)."""
    ids = [p.input_ids if isinstance(p, MultimodalPrompt) else p for p in prompts]
    t = t or max(map(len, ids))
    batch = torch.tensor([x + [0] * (t - len(x)) for x in ids])
    mask = torch.tensor([[1] * len(x) + [0] * (t - len(x)) for x in ids])
    mm = [p for p in prompts if isinstance(p, MultimodalPrompt) and p.num_images]
    kw = {}
    if mm:
        kw = dict(pixel_values=torch.cat([p.pixel_values for p in mm]), image_grid_thw=torch.cat([p.image_grid_thw for p in mm]),
                  mm_token_type_ids=(batch == hf.config.image_token_id).int())
    with torch.no_grad():
        return hf(input_ids=batch, attention_mask=mask, **kw).logits, mask.bool()


def our_logits(model, prompts):
    ids = [p.input_ids if isinstance(p, MultimodalPrompt) else p for p in prompts]
    t = max(map(len, ids))
    batch = torch.tensor([x + [0] * (t - len(x)) for x in ids])
    mm = [p if isinstance(p, MultimodalPrompt) else None for p in prompts]
    with torch.no_grad():
        return model.compute_logits(model.forward_padded(batch, mm))


def hf_vlm_reference(tok, tied=False, seed=0, max_position_embeddings=1024):
    """A tiny random transformers Qwen2.5-VL in fp32 with `tok`'s vision token ids. Every parameter,
    biases and norm weights included, is drawn at scale 0.2 (norms around 1), so a wrong mapping
    moves logits far past test tolerances and greedy decoding has clear winners."""
    import transformers

    ids = {k: tok.tok.token_to_id(t) for k, t in [("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
           ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}
    cfg = transformers.Qwen2_5_VLConfig(
        text_config=dict(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_position_embeddings,
                         rms_norm_eps=1e-6, bos_token_id=None, eos_token_id=tok.eos_token_ids[0],
                         rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           window_size=56, fullatt_block_indexes=[1]),
        tie_word_embeddings=tied, **ids)
    torch.manual_seed(seed)
    model = transformers.Qwen2_5_VLForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name or "ln_q" in name else 0.2 * torch.randn_like(p))
    return model
