"""Our Qwen2.5-VL against transformers', on tiny random checkpoints transformers builds and saves.

All parameters (biases and norm weights included) are drawn at scale 0.2 so that a wrong
mapping, a missing bias or a misplaced rotary band moves the logits far more than the 1e-4
tolerance. The vision window is 2 x 2 merged tokens, so the test images span several windows,
partial ones included.
"""

import numpy as np
import pytest
import torch

from reasonrl.models import load_model
from reasonrl.models.qwen2_5_vl import MultimodalPrompt, Qwen2_5_VL, preprocess, smart_resize
from tests.models.vlm_common import IMAGE_CFG, SIZES, hf_logits, images_prompt, noise_image, our_logits

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


def test_smart_resize_matches_transformers_on_a_sweep():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as reference

    for h in [1, 13, 28, 41, 56, 99, 224, 333, 1000, 2047]:
        for w in [5, 27, 64, 150, 511, 1280]:
            if max(h, w) / min(h, w) > 200:
                continue
            for lo, hi in [(56 * 56, 28 * 28 * 64), (3136, 12845056), (28 * 28 * 4, 28 * 28 * 4)]:
                got = smart_resize(h, w, 28, lo, hi)
                assert got == reference(h, w, 28, lo, hi), (h, w, lo, hi)
                assert got[0] % 28 == got[1] % 28 == 0


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
    with pytest.raises(ValueError, match="at least one pixel"):  # a ZeroDivisionError before
        preprocess([np.zeros((0, 10, 3), dtype=np.uint8)])
    with pytest.raises(ValueError, match="'image/gif' is not supported"):  # what serve says too
        preprocess(["data:image/gif;base64,R0lGOD"])
    with pytest.raises(ValueError, match="must be base64"):
        preprocess(["data:image/png,rawbytes"])
    with pytest.raises(ValueError, match="not a valid PNG image"):
        preprocess(["data:image/png;base64,aGVsbG8="])


# ---- vision tower and logits -----------------------------------------------------------------

def test_vision_tower_matches_transformers(hf_vlm, vlm_tok):
    path, hf = hf_vlm()
    ours = load_model(path, "cpu")
    pixels, grid = preprocess([noise_image(h, w, i) for i, (h, w) in enumerate(SIZES)], IMAGE_CFG)
    with torch.no_grad():
        expected = hf.model.visual(pixels, grid_thw=grid).pooler_output
        got = ours.encode_images(pixels, grid)
    assert got.shape == (int(grid.prod(-1).sum()) // 4, 64)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("variant", ["base", "sharded", "bf16", "tied"])
def test_several_images_in_one_prompt(hf_vlm, vlm_tok, variant):
    path, hf = hf_vlm(variant)
    if variant == "sharded":
        assert len(list(path.glob("model-*.safetensors"))) > 1
    ours = load_model(path, "cpu")
    assert isinstance(ours, Qwen2_5_VL) and ours.dtype == torch.float32
    mm = images_prompt(vlm_tok, ours.vlm_config)
    assert mm.image_grid_thw.tolist() == [[1, 4, 6], [1, 10, 10], [1, 2, 14]]
    expected, _ = hf_logits(hf, [mm])
    torch.testing.assert_close(our_logits(ours, [mm]), expected, atol=1e-4, rtol=0)


def test_text_only_prompt(hf_vlm, vlm_tok):
    path, hf = hf_vlm()
    ours = load_model(path, "cpu")
    ids = vlm_tok.apply_chat_template([{"role": "user", "content": "How many squares are there?"}])
    expected, _ = hf_logits(hf, [ids])
    torch.testing.assert_close(our_logits(ours, [ids]), expected, atol=1e-4, rtol=0)
    text_prompt = MultimodalPrompt.from_ids(ids, None, None, ours.vlm_config)  # no images: plain positions
    assert torch.equal(text_prompt.positions, torch.arange(len(ids)).expand(3, -1)) and text_prompt.rope_delta == 0
    torch.testing.assert_close(our_logits(ours, [text_prompt]), expected, atol=1e-4, rtol=0)


def test_padded_batch_of_prompts(hf_vlm, vlm_tok):
    path, hf = hf_vlm()
    ours = load_model(path, "cpu")
    cfg = ours.vlm_config
    prompts = [images_prompt(vlm_tok, cfg, [(56, 84)], seed=3),
               vlm_tok.apply_chat_template([{"role": "user", "content": "What is in the picture?"}]),
               images_prompt(vlm_tok, cfg, [(150, 150), (30, 200)], seed=5)]
    expected, mask = hf_logits(hf, prompts)
    got = our_logits(ours, prompts)
    torch.testing.assert_close(got[mask], expected[mask], atol=1e-4, rtol=0)


def test_mrope_positions_match_get_rope_index(hf_vlm, vlm_tok):
    path, hf = hf_vlm()
    cfg = load_model(path, "cpu").vlm_config
    mm = images_prompt(vlm_tok, cfg)
    ids = torch.tensor([mm.input_ids])
    positions, delta = hf.model.get_rope_index(ids, (ids == cfg.image_token_id).int(), mm.image_grid_thw)
    assert torch.equal(positions[:, 0], mm.positions) and int(delta) == mm.rope_delta < 0


def test_training_forward_reaches_the_vision_tower(hf_vlm, vlm_tok):
    path, _ = hf_vlm()
    ours = load_model(path, "cpu").train()
    mm = images_prompt(vlm_tok, ours.vlm_config, [(56, 84)])
    ids = torch.tensor([mm.input_ids + [5, 6]])  # prompt + a 2-token response
    logits = ours.compute_logits(ours.forward_padded(ids, [mm]))
    logits[0, -3:].logsumexp(-1).sum().backward()
    assert ours.visual.patch_embed.proj.weight.grad.abs().sum() > 0
    assert ours.layers[0].self_attn.qkv_proj.weight.grad.abs().sum() > 0


# ---- inference: paged KV, chunked prefill, decode ----------------------------------------------

def test_paged_chunked_prefill_and_decode_match_transformers_generate(hf_vlm, vlm_tok, monkeypatch):
    """Prefill in two chunks split inside an image's placeholders, then greedy decode through the
    paged KV cache: the same tokens as transformers' generate, and logits equal to a padded forward."""
    from reasonrl.engine.attention import AttentionMetadata, PagedAttention
    from reasonrl.engine.kv.dense import DenseKV

    path, hf = hf_vlm()
    ours = load_model(path, "cpu")
    mm = images_prompt(vlm_tok, ours.vlm_config)
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
        monkeypatch.setattr(hf.generation_config, "eos_token_id", None)  # greedy through EOS, as ours above
        generated = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=mm.pixel_values,
                                image_grid_thw=mm.image_grid_thw, mm_token_type_ids=(ids == hf.config.image_token_id).int(),
                                max_new_tokens=steps, do_sample=False)
    assert tokens == generated[0].tolist()
    with torch.no_grad():  # the training forward over prompt + response, the response at decode positions
        full = ours.compute_logits(ours.forward_padded(torch.tensor([tokens]), [mm]))
    torch.testing.assert_close(torch.cat(logits[1:]), full[0, len(mm.input_ids) - 1:], atol=1e-4, rtol=0)


def test_engine_runs_a_vlm_checkpoint_on_text_prompts(hf_vlm, vlm_tok, monkeypatch):
    """Today's engine, unchanged, serves text prompts on a Qwen2.5-VL checkpoint (equal M-RoPE rows
    are plain RoPE): greedy tokens equal transformers' generate."""
    from reasonrl.engine import LLM, SamplingParams

    path, hf = hf_vlm()
    llm = LLM(path, vlm_tok, device="cpu", dtype="float32")
    prompt = vlm_tok.apply_chat_template([{"role": "user", "content": "How many squares are there?"}])
    out = llm.generate(prompt, SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))[0]
    ids = torch.tensor([prompt])
    monkeypatch.setattr(hf.generation_config, "eos_token_id", None)  # ignore_eos: greedy through EOS
    with torch.no_grad():
        expected = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
    assert out.outputs[0].token_ids == expected[0, len(prompt):].tolist()
