"""Fixtures of the Qwen2.5-VL tests (helpers in vlm_common.py)."""

import pytest
import torch

from reasonrl.models.tiny_vlm import make_vlm_tokenizer
from tests.models.vlm_common import CORPUS


@pytest.fixture(scope="session")
def vlm_tok():
    return make_vlm_tokenizer(CORPUS, vocab_size=384)


@pytest.fixture(scope="session")
def hf_vlm(tmp_path_factory, vlm_tok):
    """Factory: (variant) -> (checkpoint dir, transformers reference in fp32). Variants: "base",
    "sharded" (max_shard_size), "bf16" (bf16 on disk; the reference is reloaded from it), "tied"."""
    import transformers

    cache = {}

    def make(variant="base"):
        if variant in cache:
            return cache[variant]
        ids = {k: vlm_tok.tok.token_to_id(t) for k, t in [("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
               ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}
        cfg = transformers.Qwen2_5_VLConfig(
            text_config=dict(vocab_size=vlm_tok.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-6,
                             bos_token_id=None, eos_token_id=vlm_tok.eos_token_ids[0],
                             rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}),
            vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                               window_size=56, fullatt_block_indexes=[1]),
            tie_word_embeddings=variant == "tied", **ids)
        torch.manual_seed(len(cache))
        model = transformers.Qwen2_5_VLForConditionalGeneration(cfg).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name or "ln_q" in name else 0.2 * torch.randn_like(p))
        path = tmp_path_factory.mktemp(f"qwen2_5_vl_{variant}")
        if variant == "bf16":
            model.to(torch.bfloat16).save_pretrained(path)
            model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
        else:
            model.save_pretrained(path, **({"max_shard_size": "100KB"} if variant == "sharded" else {}))
        cache[variant] = (path, model)
        return cache[variant]

    return make
