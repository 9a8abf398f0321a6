"""Qwen2.5-VL checkpoints: both key layouts load, ours saves what transformers loads, real dimensions
map onto every key (on the meta device), and config.json forms and errors."""

import copy
import json
import logging
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from reasonrl.models import ConfigError, Tokenizer, load_model, save_model
from reasonrl.models.loader import hf_views, load_state
from reasonrl.models.qwen2_5_vl import ImageConfig, Qwen2_5_VL, VLMConfig, build_prompt
from reasonrl.models.tiny_vlm import make_vlm_checkpoint
from tests.models.vlm_common import IMAGE_CFG, hf_logits, images_prompt, noise_image, our_logits

# Qwen2.5-VL-7B-Instruct's config.json (current hub revision: text keys at the top and under text_config)
_TEXT_7B = {"hidden_act": "silu", "hidden_size": 3584, "intermediate_size": 18944, "max_position_embeddings": 128000,
            "max_window_layers": 28, "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
            "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "use_sliding_window": False, "vocab_size": 152064,
            "rope_scaling": {"mrope_section": [16, 24, 24], "rope_type": "default", "type": "default"},
            "bos_token_id": 151643, "eos_token_id": 151645}
_VISION_7B = {"depth": 32, "fullatt_block_indexes": [7, 15, 23, 31], "hidden_act": "silu", "hidden_size": 1280,
              "in_channels": 3, "in_chans": 3, "intermediate_size": 3420, "model_type": "qwen2_5_vl", "num_heads": 16,
              "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14,
              "temporal_patch_size": 2, "tokens_per_second": 2, "window_size": 112}
QWEN2_5_VL_7B = {"architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl", **_TEXT_7B,
                 "sliding_window": 32768, "text_config": {**_TEXT_7B, "model_type": "qwen2_5_vl_text", "torch_dtype": "float32"},
                 "tie_word_embeddings": False, "torch_dtype": "bfloat16", "image_token_id": 151655, "video_token_id": 151656,
                 "vision_start_token_id": 151652, "vision_end_token_id": 151653, "vision_token_id": 151654,
                 "vision_config": _VISION_7B}
# Qwen2.5-VL-3B-Instruct's config.json (older revision: flat text keys, "mrope" rope type, tied embeddings)
QWEN2_5_VL_3B = {"architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl", "hidden_act": "silu",
                 "hidden_size": 2048, "intermediate_size": 11008, "max_position_embeddings": 128000, "num_attention_heads": 16,
                 "num_hidden_layers": 36, "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
                 "sliding_window": 32768, "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_sliding_window": False,
                 "vocab_size": 151936, "bos_token_id": 151643, "eos_token_id": 151645, "image_token_id": 151655,
                 "video_token_id": 151656, "vision_start_token_id": 151652, "vision_end_token_id": 151653,
                 "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
                 "vision_config": {**{k: v for k, v in _VISION_7B.items() if k not in ("in_channels", "model_type")},
                                   "out_hidden_size": 2048}}


def to_hub_name(name):
    """transformers 5.x module name -> the name in hub checkpoints."""
    return name.replace("model.language_model.", "model.", 1).replace("model.visual.", "visual.", 1)


@pytest.mark.parametrize("config", [QWEN2_5_VL_7B, QWEN2_5_VL_3B], ids=["7B", "3B"])
def test_real_checkpoint_keys_at_real_dimensions(config, caplog):
    """Every tensor of a real checkpoint (names and shapes from transformers' model at the same config,
    on the meta device) fills our model exactly, in both layouts; ours saves the hub names."""
    import transformers

    with torch.device("meta"):
        ref = transformers.Qwen2_5_VLForConditionalGeneration(transformers.Qwen2_5_VLConfig(**copy.deepcopy(config)))
        ours = Qwen2_5_VL(VLMConfig.from_dict(config))
    state = ref.state_dict()
    if ref.config.tie_word_embeddings:
        state.pop("lm_head.weight")  # tied checkpoints do not store it
    hub = {to_hub_name(k): v for k, v in state.items()}
    with caplog.at_level(logging.WARNING):
        load_state(ours, hub.items())  # raises on a shape mismatch or an unfilled parameter
        load_state(ours, state.items())
    assert not [r for r in caplog.records if "ignoring" in r.message]
    views = hf_views(ours)
    assert {k: tuple(v.shape) for k, v in views.items()} == {k: tuple(v.shape) for k, v in hub.items()}
    hidden = config["hidden_size"]
    assert views["visual.patch_embed.proj.weight"].shape == (1280, 3, 2, 14, 14)
    assert views["visual.merger.mlp.0.weight"].shape == (5120, 5120)
    assert views["visual.merger.mlp.2.weight"].shape == (hidden, 5120)
    assert views["visual.blocks.31.mlp.gate_proj.bias"].shape == (3420,)
    assert ours.config.mrope_section == (16, 24, 24) and ours.config.rope_theta == 1e6
    assert ours.config.torch_dtype == "bfloat16" and ours.vlm_config.vision.fullatt_block_indexes == (7, 15, 23, 31)


def test_transformers_module_layout_loads(hf_vlm, vlm_tok, tmp_path):
    """A checkpoint written under transformers 5.x's module names (model.visual.*, model.language_model.*)."""
    path, hf = hf_vlm()
    state = hf.state_dict()
    assert any(k.startswith("model.language_model.") for k in state) and any(k.startswith("model.visual.") for k in state)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    ours, mm = load_model(tmp_path, "cpu"), None
    mm = images_prompt(vlm_tok, ours.vlm_config)
    torch.testing.assert_close(our_logits(ours, [mm]), hf_logits(hf, [mm])[0], atol=1e-4, rtol=0)


def test_save_round_trip_loads_in_transformers(hf_vlm, vlm_tok, tmp_path):
    import transformers

    path, hf = hf_vlm()
    ours = load_model(path, "cpu")
    ours.image_config = IMAGE_CFG
    save_model(ours, tmp_path / "out", vlm_tok, max_shard_bytes=100_000)
    out = tmp_path / "out"
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    with safe_open(path / "model.safetensors", "pt") as f:
        assert set(index) == set(f.keys())  # the layout transformers itself saves
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "qwen2_5_vl" and cfg["hidden_size"] == cfg["text_config"]["hidden_size"] == 64
    assert cfg["rope_scaling"]["mrope_section"] == [2, 3, 3]
    assert ImageConfig.from_dir(out) == IMAGE_CFG
    reloaded = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(out).eval()
    mm = images_prompt(vlm_tok, ours.vlm_config)
    torch.testing.assert_close(hf_logits(reloaded, [mm])[0], hf_logits(hf, [mm])[0], atol=1e-5, rtol=0)
    again = load_model(out, "cpu")
    assert again.image_config == IMAGE_CFG
    torch.testing.assert_close(our_logits(again, [mm]), our_logits(ours, [mm]), atol=0, rtol=0)


def test_bf16_save_is_bf16_on_disk(hf_vlm, vlm_tok, tmp_path):
    import transformers

    path, _ = hf_vlm()
    ours = load_model(path, "cpu", dtype="bfloat16")
    assert ours.visual.patch_embed.proj.weight.dtype == torch.bfloat16
    save_model(ours, tmp_path, vlm_tok)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    reloaded = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ours32 = load_model(tmp_path, "cpu")
    mm = images_prompt(vlm_tok, ours32.vlm_config)
    torch.testing.assert_close(our_logits(ours32, [mm]), hf_logits(reloaded, [mm])[0], atol=1e-4, rtol=0)


def test_tiny_vlm_checkpoint_from_scratch(vlm_tok, tmp_path):
    """make_vlm_checkpoint: a checkpoint transformers loads, whose tokenizer renders image parts."""
    import transformers

    path = make_vlm_checkpoint(tmp_path, vlm_tok, std=0.2, image_config=IMAGE_CFG)
    ours = load_model(path, "cpu")
    ref = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(path).eval()
    tokenizer = Tokenizer.from_dir(path)
    mm = images_prompt(tokenizer, ours.vlm_config, [(56, 84), (150, 150)])
    torch.testing.assert_close(our_logits(ours, [mm]), hf_logits(ref, [mm])[0], atol=1e-4, rtol=0)


def test_chat_template_and_placeholder_expansion(vlm_tok, tmp_path):
    """Image parts render as Qwen2.5-VL's template does; expanding placeholders on ids gives what
    transformers' processor does on text (each <|image_pad|> repeated grid.prod() / 4 times, then
    tokenized; the processor class itself needs torchvision, absent here)."""
    import transformers
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    path = make_vlm_checkpoint(tmp_path, vlm_tok)
    cfg = VLMConfig.from_dir(path)
    images = [noise_image(56, 84, 1), noise_image(150, 150, 2)]
    messages = [{"role": "user", "content": [{"type": "image", "image": images[0]}, {"type": "text", "text": "and"},
                                             {"type": "image", "image": images[1]}, {"type": "text", "text": "compare them."}]}]
    text = vlm_tok.apply_chat_template(messages, tokenize=False)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    "<|vision_start|><|image_pad|><|vision_end|>and<|vision_start|><|image_pad|><|vision_end|>compare them."
                    "<|im_end|>\n<|im_start|>assistant\n")
    grids = Qwen2VLImageProcessorPil(min_pixels=IMAGE_CFG.min_pixels, max_pixels=IMAGE_CFG.max_pixels)(images)["image_grid_thw"]
    pieces = text.split("<|image_pad|>")
    expanded = pieces[0] + "".join("<|image_pad|>" * (int(np.prod(g)) // 4) + rest for g, rest in zip(grids, pieces[1:]))
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"))
    mm = build_prompt(vlm_tok, messages, cfg, IMAGE_CFG)
    assert mm.input_ids == hf_tok(expanded)["input_ids"]
    assert mm.image_rows.tolist() == [i for i, t in enumerate(mm.input_ids) if t == cfg.image_token_id]
    assert len(mm.image_rows) == 6 + 25


# ---- config.json forms and errors --------------------------------------------------------------

def test_config_forms_agree():
    """The 7B config read from the hub form and from transformers 5.x's nested form agree."""
    import transformers

    hub = VLMConfig.from_dict(QWEN2_5_VL_7B)
    nested = VLMConfig.from_dict(transformers.Qwen2_5_VLConfig(**copy.deepcopy(QWEN2_5_VL_7B)).to_dict())
    for field in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "rope_theta", "mrope_section",
                  "vocab_size", "tie_word_embeddings", "rms_norm_eps", "qkv_bias", "o_bias"):
        assert getattr(hub.text, field) == getattr(nested.text, field), field
    assert hub.vision == nested.vision and hub.image_token_id == nested.image_token_id == 151655
    again = VLMConfig.from_dict(hub.to_dict())  # what save_model writes reads back the same
    assert replace(again.text, raw={}) == replace(hub.text, raw={}) and again.vision == hub.vision


def test_config_errors_name_the_key():
    no_mrope = {**QWEN2_5_VL_7B, "rope_scaling": None, "text_config": None}
    with pytest.raises(ConfigError, match="mrope_section"):
        VLMConfig.from_dict(no_mrope)
    with pytest.raises(ConfigError, match="mrope_section.*head_dim / 2 = 64"):
        VLMConfig.from_dict({**QWEN2_5_VL_7B, "text_config": None, "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 16]}})
    with pytest.raises(ConfigError, match="vision_config 'hidden_act'"):
        VLMConfig.from_dict({**QWEN2_5_VL_7B, "vision_config": {**_VISION_7B, "hidden_act": "quick_gelu"}})
    with pytest.raises(ConfigError, match="fullatt_block_indexes"):
        VLMConfig.from_dict({**QWEN2_5_VL_7B, "vision_config": {**_VISION_7B, "fullatt_block_indexes": [32]}})
    with pytest.raises(ConfigError, match="window_size"):
        VLMConfig.from_dict({**QWEN2_5_VL_7B, "vision_config": {**_VISION_7B, "window_size": 100}})
    with pytest.raises(ConfigError, match="vision_config"):
        VLMConfig.from_dict({k: v for k, v in QWEN2_5_VL_7B.items() if k != "vision_config"})


def test_chat_template_json_is_read(vlm_tok, tmp_path):
    """Qwen2.5-VL hub checkpoints keep their template in chat_template.json."""
    vlm_tok.save(tmp_path)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    template = cfg.pop("chat_template")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert Tokenizer.from_dir(tmp_path).chat_template is None
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    assert Tokenizer.from_dir(tmp_path).chat_template == template


def test_image_bounds_saved_by_transformers_5_are_read(vlm_tok, tmp_path):
    """transformers 5 saves the image processor inside processor_config.json and no
    preprocessor_config.json: its max_pixels was ignored, and an 800x600 image got 609 tokens, not 54."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from reasonrl.models.qwen2_5_vl import preprocess

    make_vlm_checkpoint(tmp_path, vlm_tok)
    (tmp_path / "preprocessor_config.json").unlink()
    processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64)
    (tmp_path / "processor_config.json").write_text(json.dumps({"image_processor": processor.to_dict(),
                                                                "processor_class": "Qwen2_5_VLProcessor"}))
    image = noise_image(600, 800)
    theirs = Qwen2VLImageProcessorPil.from_pretrained(tmp_path)([image], return_tensors="pt")["image_grid_thw"]
    ours = preprocess([image], load_model(tmp_path, "cpu").image_config)[1]
    assert ours.tolist() == theirs.tolist() == [[1, 12, 18]]


def test_video_parts_and_placeholders_are_refused(vlm_tok, tmp_path):
    """Videos are not supported: LLM.chat dropped a video part (the template kept one bare
    <|video_pad|>) and the engine ran a prompt of video placeholders as text."""
    from reasonrl.engine import LLM, SamplingParams

    make_vlm_checkpoint(tmp_path, vlm_tok)
    llm = LLM(str(tmp_path), kv_cache_memory=1 << 22)
    video = [{"role": "user", "content": [{"type": "video", "video": "clip.mp4"}, {"type": "text", "text": "what?"}]}]
    with pytest.raises(ValueError, match="content parts of type 'video' are not supported"):
        llm.chat(video, SamplingParams(max_tokens=2))
    with pytest.raises(ValueError, match="video placeholder tokens"):
        llm.generate([[llm.engine.model.vlm_config.video_token_id] * 3], SamplingParams(max_tokens=2))
