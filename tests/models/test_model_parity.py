"""Our decoder against transformers, on tiny checkpoints of each supported family."""

import json

import pytest
import torch

from reasonrl.models import CheckpointError, ConfigError, ModelConfig, load_model, save_model

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32, "rope_theta": 500000.0}

CASES = {
    "llama": ("llama", {}),
    "qwen2": ("qwen2", {}),
    "qwen3": ("qwen3", {"head_dim": 32}),
    "qwen2-gqa7-tied": ("qwen2", {"hidden_size": 112, "num_attention_heads": 14, "num_key_value_heads": 2,
                                  "tie_word_embeddings": True}),
    "llama-llama3-rope": ("llama", {"rope_parameters": LLAMA3_ROPE, "max_position_embeddings": 256}),
    "llama-linear-rope": ("llama", {"rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}}),
    "llama-bias": ("llama", {"attention_bias": True, "mlp_bias": True}),
    "qwen3-bias-tied": ("qwen3", {"attention_bias": True, "tie_word_embeddings": True}),
}


def logits_of(model, ids):
    with torch.no_grad():
        return model.compute_logits(model.forward_padded(ids))


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers(hf_checkpoint, case):
    family, overrides = CASES[case]
    path, ref = hf_checkpoint(family, **overrides)
    ours = load_model(path, "cpu")
    ids = torch.randint(0, ref.config.vocab_size, (3, 48))
    with torch.no_grad():
        expected = ref(ids).logits
    torch.testing.assert_close(logits_of(ours, ids), expected, atol=1e-4, rtol=0)


def test_legacy_rope_keys_and_sharded_checkpoint(hf_checkpoint):
    """Hub checkpoints carry rope_theta/rope_scaling (not rope_parameters) and big ones are sharded."""
    path, ref = hf_checkpoint("llama", max_shard_size="40KB", legacy_config=True,
                              rope_parameters=LLAMA3_ROPE, max_position_embeddings=256)
    assert (path / "model.safetensors.index.json").is_file()
    assert len(list(path.glob("model-*.safetensors"))) > 1
    assert "rope_scaling" in json.loads((path / "config.json").read_text())
    ours = load_model(path, "cpu")
    assert ours.config.rope_type == "llama3"
    ids = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(logits_of(ours, ids), ref(ids).logits, atol=1e-4, rtol=0)


def test_sharded_pickle_checkpoint_loads(hf_checkpoint, tmp_path):
    """Older hub checkpoints: pytorch_model-0000i-of-0000n.bin shards and pytorch_model.bin.index.json."""
    from safetensors.torch import load_file

    src, ref = hf_checkpoint("llama", max_shard_size="40KB")
    path = tmp_path / "bin"
    path.mkdir()
    (path / "config.json").write_text((src / "config.json").read_text())
    index = json.loads((src / "model.safetensors.index.json").read_text())
    renamed = {f: f.replace("model-", "pytorch_model-").replace(".safetensors", ".bin") for f in set(index["weight_map"].values())}
    for shard, target in renamed.items():
        torch.save(load_file(src / shard), path / target)
    index["weight_map"] = {name: renamed[f] for name, f in index["weight_map"].items()}
    (path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    assert len(renamed) > 1
    ids = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(logits_of(load_model(path, "cpu"), ids), ref(ids).logits, atol=1e-4, rtol=0)
    (path / sorted(renamed.values())[-1]).unlink()
    with pytest.raises(FileNotFoundError, match=r"shard pytorch_model-.*\.bin listed in pytorch_model\.bin\.index\.json"):
        load_model(path, "cpu")


def test_dynamic_ntk_matches_transformers_at_the_planned_length(hf_checkpoint):
    """Dynamic NTK is fixed from max_len (see rope.py): equal to transformers' full-sequence forward
    at that length, and plain RoPE within max_position_embeddings."""
    rope = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    path, ref = hf_checkpoint("llama", rope_parameters=rope, max_position_embeddings=32)
    ids = torch.randint(0, 256, (1, 64))
    with torch.no_grad():  # short first: transformers keeps the scaled base after a long forward
        expected_short = ref(ids[:, :32]).logits
        expected_long = ref(ids).logits
    torch.testing.assert_close(logits_of(load_model(path, "cpu", max_len=64), ids), expected_long, atol=1e-4, rtol=0)
    torch.testing.assert_close(logits_of(load_model(path, "cpu"), ids[:, :32]), expected_short, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_save_round_trip_loads_in_transformers(hf_checkpoint, tmp_path, family):
    import transformers

    path, ref = hf_checkpoint(family, tie_word_embeddings=(family == "qwen3"))
    ours = load_model(path, "cpu")
    save_model(ours, tmp_path / "out", max_shard_bytes=30_000)
    assert (tmp_path / "out" / "model.safetensors.index.json").is_file()
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ours_again = load_model(tmp_path / "out", "cpu")
    ids = torch.randint(0, 256, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, ref(ids).logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits_of(ours_again, ids), logits_of(ours, ids), atol=0, rtol=0)


def test_bfloat16_load(hf_checkpoint):
    path, ref = hf_checkpoint("qwen2")
    ours = load_model(path, "cpu", dtype="bfloat16")
    assert ours.dtype == torch.bfloat16 and ours.rotary.inv_freq.dtype == torch.float32
    ids = torch.randint(0, 256, (1, 16))
    with torch.no_grad():
        assert (logits_of(ours, ids).float() - ref(ids).logits).abs().max() < 0.5


# ---- clear errors ----------------------------------------------------------------------------

def test_missing_directory_and_files(tmp_path, hf_checkpoint):
    with pytest.raises(FileNotFoundError, match="does not exist$"):
        load_model(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"nope does not exist \(relative to the current directory, /"):
        load_model("no/such/nope")  # a recipe's relative path run from another directory
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(tmp_path / "empty")
    path, _ = hf_checkpoint("qwen2")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no weights"):
        load_model(tmp_path / "noweights")


def _config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    if "rope_scaling" in changes:
        cfg.pop("rope_parameters")
    cfg.update(changes)
    return cfg


def test_unsupported_architecture_and_rope(hf_checkpoint):
    path, _ = hf_checkpoint("qwen2")
    with pytest.raises(ConfigError, match="unsupported architecture.*GPT2LMHeadModel"):
        ModelConfig.from_dict(_config(path, architectures=["GPT2LMHeadModel"]))
    with pytest.raises(ConfigError, match="unsupported rope type 'longrope'"):
        ModelConfig.from_dict(_config(path, rope_parameters={"rope_type": "longrope", "rope_theta": 1e4}))
    with pytest.raises(ConfigError, match="needs key 'low_freq_factor'"):
        ModelConfig.from_dict(_config(path, rope_scaling={"type": "llama3", "factor": 8.0}))
    with pytest.raises(ConfigError, match="hidden_size"):
        ModelConfig.from_dict(_config(path, hidden_size="64"))
    with pytest.raises(ConfigError, match="two rope types, rope_type 'linear' and type 'default'"):
        ModelConfig.from_dict(_config(path, rope_scaling={"type": "default", "rope_type": "linear", "factor": 4.0}))
    # Qwen2.5-VL's hub configs spell M-RoPE both ways ("mrope" and "default"): one type, no error
    assert ModelConfig.from_dict(_config(path, rope_scaling={"type": "mrope", "rope_type": "default",
                                                             "mrope_section": [2, 3, 3]})).rope_type == "default"


def test_config_forms_of_real_checkpoints(hf_checkpoint):
    """Config spellings found on the Hub that transformers reads; each once read wrong or refused."""
    path, _ = hf_checkpoint("qwen2")
    inner = _config(path, rope_scaling={"rope_type": "default", "rope_theta": 1e6})  # transformers 4.5x configs
    inner.pop("rope_theta", None)
    cfg = ModelConfig.from_dict(inner)
    assert cfg.rope_theta == 1e6 and cfg.rope_scaling is None  # was 10000: silently wrong, and saved so
    assert cfg.to_dict()["rope_theta"] == 1e6
    with pytest.raises(ConfigError, match="'rope_theta' is 500000.0 but 'rope_scaling' holds 'rope_theta' 1000000.0"):
        ModelConfig.from_dict({**inner, "rope_theta": 5e5})
    unnamed = _config(path)
    del unnamed["architectures"]
    assert ModelConfig.from_dict(unnamed).architecture == "Qwen2ForCausalLM"  # transformers goes by model_type
    with pytest.raises(ConfigError, match="'model_type' 'gpt2' \\(no 'architectures'\\)"):
        ModelConfig.from_dict({**unnamed, "model_type": "gpt2"})
    layers = unnamed["num_hidden_layers"]
    window = dict(use_sliding_window=True, sliding_window=16)
    assert ModelConfig.from_dict(_config(path, **window, max_window_layers=layers))  # no layer slides
    assert ModelConfig.from_dict(_config(path, **window, layer_types=["full_attention"] * layers))
    assert ModelConfig.from_dict(_config(path, use_sliding_window=True, sliding_window=None, max_window_layers=0))
    slides = {k: v for k, v in _config(path, **window, max_window_layers=1).items() if k != "layer_types"}
    with pytest.raises(ConfigError, match=f"layers 1-{layers - 1} slide"):  # layer_types, when given, decides
        ModelConfig.from_dict(slides)


def test_generation_config_eos_stops_without_a_tokenizer(hf_checkpoint, tmp_path):
    """A checkpoint whose generation_config.json lists an end-of-sequence id config.json does not
    (Qwen2.5-Instruct's <|endoftext|>) stops on it when driven by token ids, as transformers does."""
    from reasonrl.engine import EngineConfig, LLMEngine

    path, _ = hf_checkpoint("qwen2")
    model = load_model(path)
    model.config.generation = {"eos_token_id": [7, 202]}
    assert {7, 202} <= set(model.config.stop_token_ids)
    engine = LLMEngine(model, None, EngineConfig(kv_cache_memory="4MiB"))
    assert {7, 202} <= engine.eos_ids and set(model.config.eos_token_ids) <= engine.eos_ids


def test_shape_mismatch_names_the_tensor(hf_checkpoint, tmp_path):
    path, _ = hf_checkpoint("qwen2")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes())
    (bad / "config.json").write_text(json.dumps(_config(path, intermediate_size=96)))
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.mlp\.(down|gate|up)_proj\.weight.*shape"):
        load_model(bad)


def test_missing_tensor_is_named(hf_checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    path, _ = hf_checkpoint("qwen2")
    tensors = load_file(path / "model.safetensors")
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    bad = tmp_path / "bad"
    bad.mkdir()
    save_file(tensors, bad / "model.safetensors")
    (bad / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(CheckpointError, match=r"missing tensors: model\.layers\.1\.self_attn\.qkv_proj\.weight"):
        load_model(bad)


def test_bad_dtype_and_device(hf_checkpoint):
    path, _ = hf_checkpoint("qwen2")
    with pytest.raises(ValueError, match="unsupported dtype 'float8'"):
        load_model(path, "cpu", dtype="float8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda.*not available|is_available"):
            load_model(path, "cuda")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_is_the_hugging_face_formula_bit_for_bit(dtype):
    """RMSNorm runs F.rms_norm (one kernel); it must give what the explicit formula of the Hugging
    Face modules gives: normalise in fp32, cast back, then scale."""
    from reasonrl.models.model import RMSNorm

    torch.manual_seed(0)
    norm = RMSNorm(96, 1e-6).to(dtype)
    norm.weight.data = torch.randn(96).to(dtype)
    x = (torch.randn(5, 7, 96) * 3).to(dtype)
    h = x.float()
    expected = norm.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)).to(dtype)
    assert torch.equal(norm(x), expected)


def _rewritten(path, tmp_path, tensors, **config):
    from safetensors.torch import save_file

    out = tmp_path / "rewritten"
    out.mkdir()
    save_file(tensors, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(_config(path, **config)))
    return out


def test_tensors_the_config_does_not_use_are_refused(hf_checkpoint, tmp_path):
    """Biases in the file of a config without them: the model would run without them, wrongly."""
    from safetensors.torch import load_file

    path, _ = hf_checkpoint("llama", attention_bias=True)
    bad = _rewritten(path, tmp_path, load_file(path / "model.safetensors"), attention_bias=False)
    with pytest.raises(CheckpointError, match=r"does not use: model\.layers\.0\.self_attn\.[qkvo]_proj\.bias"):
        load_model(bad)


def test_a_tied_config_refuses_a_separate_head_and_drops_an_equal_one(hf_checkpoint, tmp_path):
    from safetensors.torch import load_file

    path, ref = hf_checkpoint("qwen2", tie_word_embeddings=True)
    tensors = load_file(path / "model.safetensors")
    assert "lm_head.weight" not in tensors
    embed = tensors["model.embed_tokens.weight"]
    equal = _rewritten(path, tmp_path, {**tensors, "lm_head.weight": embed.clone()})
    ids = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(logits_of(load_model(equal, "cpu"), ids), ref(ids).logits, atol=1e-4, rtol=0)
    (equal / "model.safetensors").unlink()
    from safetensors.torch import save_file
    save_file({**tensors, "lm_head.weight": torch.randn_like(embed)}, equal / "model.safetensors")
    with pytest.raises(CheckpointError, match="ties the word embeddings, but the file's lm_head.weight differs"):
        load_model(equal)


def test_a_single_file_wins_over_a_stale_index(hf_checkpoint, tmp_path):
    """save_pretrained unsharded into a directory that held shards leaves the old index behind;
    transformers then reads model.safetensors, and so do we."""
    import shutil

    path, ref = hf_checkpoint("qwen2")
    stale = tmp_path / "stale"
    shutil.copytree(path, stale)
    (stale / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"lm_head.weight": "model-00001-of-00002.safetensors"}}))
    ids = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(logits_of(load_model(stale, "cpu"), ids), ref(ids).logits, atol=1e-4, rtol=0)
