"""Our Qwen2.5-VL against transformers', on tiny random checkpoints transformers builds and saves.

All parameters (biases and norm weights included) are drawn at scale 0.2 so that a wrong
mapping, a missing bias or a misplaced rotary band moves the logits far more than the 1e-4
tolerance. The vision window is 2 x 2 merged tokens, so the test images span several windows,
partial ones included.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from reasonrl.models import load_model, save_model
from reasonrl.models.qwen2_5_vl import ImageConfig, MultimodalPrompt, Qwen2_5_VL, build_prompt, preprocess
from reasonrl.models.tiny_vlm import QWEN_VL_TEMPLATE, make_vlm_checkpoint, make_vlm_tokenizer

CORPUS = ["The quick brown fox jumps over the lazy dog. 12 + 30 = 42.", "What is in the picture? A red circle.",
          "Describe both images and compare them.", "How many squares are there?"] * 20
IMAGE_CFG = ImageConfig(max_pixels=28 * 28 * 64)
SIZES = [(56, 84), (150, 150), (30, 200)]  # (H, W): wide, square spanning partial windows, very wide


def noise_image(h, w, seed=0, mode="RGB"):
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    a = np.random.RandomState(seed).randint(0, 256, (h, w, channels), dtype=np.uint8)
    return Image.fromarray(a[..., 0] if mode == "L" else a, mode)


@pytest.fixture(scope="module")
def tok():
    return make_vlm_tokenizer(CORPUS, vocab_size=384)


@pytest.fixture(scope="module")
def hf_vlm(tmp_path_factory, tok):
    """Factory: (variant) -> (checkpoint dir, transformers reference in fp32). Variants: "base",
    "sharded" (max_shard_size), "bf16" (bf16 on disk; the reference is reloaded from it), "tied"."""
    import transformers

    cache = {}

    def make(variant="base"):
        if variant in cache:
            return cache[variant]
        ids = {k: tok.tok.token_to_id(t) for k, t in [("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
               ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}
        cfg = transformers.Qwen2_5_VLConfig(
            text_config=dict(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-6,
                             bos_token_id=None, eos_token_id=tok.eos_token_ids[0],
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


# ---- preprocessing ---------------------------------------------------------------------------

def test_preprocessing_matches_transformers():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    ref = Qwen2VLImageProcessorPil(min_pixels=IMAGE_CFG.min_pixels, max_pixels=IMAGE_CFG.max_pixels)
    rgb = [noise_image(h, w, i) for i, (h, w) in enumerate([(56, 84), (30, 200), (20, 20), (400, 300), (97, 61)])]
    images = rgb + [noise_image(45, 70, 7, "RGBA"), noise_image(70, 45, 8, "L"), np.asarray(noise_image(33, 90, 9))]
    ours_pixels, ours_grid = preprocess(images, IMAGE_CFG)
    expected = ref(images, return_tensors="pt")
    assert ours_grid.tolist() == expected["image_grid_thw"].tolist()
    # 20x20 grows to the 56x56 floor; 400x300 shrinks to within max_pixels
    assert ours_grid[2].tolist() == [1, 4, 4] and int(ours_grid[3].prod()) * 14 * 14 <= IMAGE_CFG.max_pixels
    torch.testing.assert_close(ours_pixels, expected["pixel_values"], atol=0, rtol=0)


def test_preprocess_paths_and_bad_inputs(tmp_path):
    image = noise_image(60, 90)
    image.save(tmp_path / "a.png")
    from_path, grid = preprocess([tmp_path / "a.png", str(tmp_path / "a.png")])
    from_pil, _ = preprocess([image, image])
    assert torch.equal(from_path, from_pil) and grid.tolist() == [[1, 4, 6], [1, 4, 6]]
    with pytest.raises(FileNotFoundError, match="missing.png"):
        preprocess([tmp_path / "missing.png"])
    with pytest.raises(ValueError, match="uint8"):
        preprocess([np.zeros((10, 10, 3), dtype=np.float32)])
    with pytest.raises(TypeError, match="unsupported image of type list"):
        preprocess([[1, 2, 3]])
    with pytest.raises(ValueError, match="aspect ratio"):
        preprocess([noise_image(2, 500)])


# ---- vision tower and logits -----------------------------------------------------------------

def test_vision_tower_matches_transformers(hf_vlm, tok):
    path, hf = hf_vlm()
    ours = load_model(path, "cpu")
    pixels, grid = preprocess([noise_image(h, w, i) for i, (h, w) in enumerate(SIZES)], IMAGE_CFG)
    with torch.no_grad():
        expected = hf.model.visual(pixels, grid_thw=grid).pooler_output
        got = ours.encode_images(pixels, grid)
    assert got.shape == (int(grid.prod(-1).sum()) // 4, 64)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("variant", ["base", "sharded", "bf16", "tied"])
def test_several_images_in_one_prompt(hf_vlm, tok, variant):
    path, hf = hf_vlm(variant)
    if variant == "sharded":
        assert len(list(path.glob("model-*.safetensors"))) > 1
    ours = load_model(path, "cpu")
    assert isinstance(ours, Qwen2_5_VL) and ours.dtype == torch.float32
    mm = images_prompt(tok, ours.vlm_config)
    assert mm.image_grid_thw.tolist() == [[1, 4, 6], [1, 10, 10], [1, 2, 14]]
    expected, _ = hf_logits(hf, [mm])
    torch.testing.assert_close(our_logits(ours, [mm]), expected, atol=1e-4, rtol=0)


def test_text_only_prompt(hf_vlm, tok):
    path, hf = hf_vlm()
    ours = load_model(path, "cpu")
    ids = tok.apply_chat_template([{"role": "user", "content": "How many squares are there?"}])
    expected, _ = hf_logits(hf, [ids])
    torch.testing.assert_close(our_logits(ours, [ids]), expected, atol=1e-4, rtol=0)
    text_prompt = MultimodalPrompt.from_ids(ids, None, None, ours.vlm_config)  # no images: plain positions
    assert torch.equal(text_prompt.positions, torch.arange(len(ids)).expand(3, -1)) and text_prompt.rope_delta == 0
    torch.testing.assert_close(our_logits(ours, [text_prompt]), expected, atol=1e-4, rtol=0)


def test_padded_batch_of_prompts(hf_vlm, tok):
    path, hf = hf_vlm()
    ours = load_model(path, "cpu")
    cfg = ours.vlm_config
    prompts = [images_prompt(tok, cfg, [(56, 84)], seed=3),
               tok.apply_chat_template([{"role": "user", "content": "What is in the picture?"}]),
               images_prompt(tok, cfg, [(150, 150), (30, 200)], seed=5)]
    expected, mask = hf_logits(hf, prompts)
    got = our_logits(ours, prompts)
    torch.testing.assert_close(got[mask], expected[mask], atol=1e-4, rtol=0)


def test_mrope_positions_match_get_rope_index(hf_vlm, tok):
    path, hf = hf_vlm()
    cfg = load_model(path, "cpu").vlm_config
    mm = images_prompt(tok, cfg)
    ids = torch.tensor([mm.input_ids])
    positions, delta = hf.model.get_rope_index(ids, (ids == cfg.image_token_id).int(), mm.image_grid_thw)
    assert torch.equal(positions[:, 0], mm.positions) and int(delta) == mm.rope_delta < 0


def test_training_forward_reaches_the_vision_tower(hf_vlm, tok):
    path, _ = hf_vlm()
    ours = load_model(path, "cpu").train()
    mm = images_prompt(tok, ours.vlm_config, [(56, 84)])
    ids = torch.tensor([mm.input_ids + [5, 6]])  # prompt + a 2-token response
    logits = ours.compute_logits(ours.forward_padded(ids, [mm]))
    logits[0, -3:].logsumexp(-1).sum().backward()
    assert ours.visual.patch_embed.proj.weight.grad.abs().sum() > 0
    assert ours.layers[0].self_attn.qkv_proj.weight.grad.abs().sum() > 0


# ---- inference: paged KV, chunked prefill, decode ----------------------------------------------

def test_paged_chunked_prefill_and_decode_match_transformers_generate(hf_vlm, tok):
    """Prefill in two chunks split inside an image's placeholders, then greedy decode through the
    paged KV cache: the same tokens as transformers' generate, and logits equal to a padded forward."""
    from reasonrl.engine.attention import AttentionMetadata, PagedAttention
    from reasonrl.engine.kv.dense import DenseKV

    path, hf = hf_vlm()
    ours = load_model(path, "cpu")
    mm = images_prompt(tok, ours.vlm_config)
    kv = DenseKV(ours.config, num_blocks=16, block_size=16, device=torch.device("cpu"), dtype=torch.float32)
    kv.allocate()
    embeds = ours.encode_images(mm.pixel_values, mm.image_grid_thw)
    tokens, logits, steps = list(mm.input_ids), [], 6
    split = int(mm.image_rows[10])  # the first chunk ends inside the first image
    spans = [(0, split), (split, len(tokens))] + [(len(tokens) + i, len(tokens) + i + 1) for i in range(steps)]
    with torch.no_grad():
        for start, stop in spans:
            rows, k0, k1 = mm.image_rows_in(start, stop)
            meta = AttentionMetadata(torch.arange(start, stop), [0, stop - start], [stop], torch.arange(16)[None].int(),
                                     torch.tensor([stop], dtype=torch.int32))
            hidden = ours(torch.tensor(tokens[start:stop]), mm.positions_for(start, stop), PagedAttention(kv, meta),
                          embeds[k0:k1] if k1 > k0 else None, rows if k1 > k0 else None)
            logits.append(ours.compute_logits(hidden[-1:]))
            if stop == len(tokens) and len(tokens) < len(mm.input_ids) + steps:
                tokens.append(int(logits[-1].argmax()))
        ids = torch.tensor([mm.input_ids])
        generated = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=mm.pixel_values,
                                image_grid_thw=mm.image_grid_thw, mm_token_type_ids=(ids == hf.config.image_token_id).int(),
                                max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
    assert tokens == generated[0].tolist()
    with torch.no_grad():  # the training forward over prompt + response, the response at decode positions
        full = ours.compute_logits(ours.forward_padded(torch.tensor([tokens]), [mm]))
    torch.testing.assert_close(torch.cat(logits[1:]), full[0, len(mm.input_ids) - 1:], atol=1e-4, rtol=0)
