"""Fixtures of the Qwen2.5-VL tests (helpers in vlm_common.py)."""

import pytest
import torch

from reasonrl.models.tiny_vlm import make_vlm_tokenizer
from tests.models.vlm_common import CORPUS, hf_vlm_reference


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
        model = hf_vlm_reference(vlm_tok, tied=variant == "tied", seed=len(cache))
        path = tmp_path_factory.mktemp(f"qwen2_5_vl_{variant}")
        if variant == "bf16":
            model.to(torch.bfloat16).save_pretrained(path)
            model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
        else:
            model.save_pretrained(path, **({"max_shard_size": "100KB"} if variant == "sharded" else {}))
        cache[variant] = (path, model)
        return cache[variant]

    return make
