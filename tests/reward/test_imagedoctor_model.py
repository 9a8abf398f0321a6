"""ImageDoctor's judge on Qwen2.5-VL: the head's checkpoint keys and shapes at real dimensions (meta
device), the forward on a tiny checkpoint (map shape = image size, values in [0, 1], gradients
reach the head and the language model), save/load in the Hugging Face layout."""

import json

import pytest
import torch

from reasonrl.models.qwen2_5_vl import MultimodalPrompt, VLMConfig
from reasonrl.models.qwen2_5_vl.model import Qwen2_5_VL
from reasonrl.models.tiny import init_weights
from reasonrl.models.tiny_vlm import make_vlm_tokenizer, tiny_vlm_config
from reasonrl.reward.imagedoctor.decoder import HeatmapConfig
from reasonrl.reward.imagedoctor.judgement import TASK_TOKENS, render_judgement
from reasonrl.reward.imagedoctor.model import (DoctorConfig, ImageDoctor, emitting_row, heatmap_loss, load_doctor,
                                               save_doctor)
from tests.models.test_qwen2_5_vl_checkpoint import QWEN2_5_VL_3B, QWEN2_5_VL_7B
from tests.models.vlm_common import CORPUS, images_prompt

TINY_HEAD = HeatmapConfig(dim=32, depth=2, heads=2, mlp_dim=48, conv_channels=(24, 16), up_channels=(16, 12, 12, 8),
                          mask_in_chans=8)


def imagedoctor_head_shapes(h: int) -> dict[str, tuple[int, ...]]:
    """The public ImageDoctor head (C = 768, two-way transformer depth 2 / 8 heads / MLP 2048, four
    transposed convolutions 768-384-384-192), written out from its modeling code's layout."""
    c, half = 768, 384
    out = {}
    for proj in ("text_hidden_fcs", "image_hidden_fcs"):
        out |= {f"{proj}.0.0.weight": (h, h), f"{proj}.0.0.bias": (h,), f"{proj}.0.2.weight": (c, h), f"{proj}.0.2.bias": (c,)}
    pe = "prompt_encoder."
    out |= {pe + "pe_layer.positional_encoding_gaussian_matrix": (2, half), pe + "not_a_point_embed.weight": (1, c),
            pe + "no_mask_embed.weight": (1, c), **{f"{pe}point_embeddings.{i}.weight": (1, c) for i in range(4)},
            pe + "mask_downscaling.0.weight": (4, 1, 2, 2), pe + "mask_downscaling.0.bias": (4,),
            pe + "mask_downscaling.1.weight": (4,), pe + "mask_downscaling.1.bias": (4,),
            pe + "mask_downscaling.3.weight": (16, 4, 2, 2), pe + "mask_downscaling.3.bias": (16,),
            pe + "mask_downscaling.4.weight": (16,), pe + "mask_downscaling.4.bias": (16,),
            pe + "mask_downscaling.6.weight": (c, 16, 1, 1), pe + "mask_downscaling.6.bias": (c,)}

    def attention(prefix, inner):
        return {**{f"{prefix}.{p}_proj.weight": (inner, c) for p in "qkv"}, **{f"{prefix}.{p}_proj.bias": (inner,) for p in "qkv"},
                f"{prefix}.out_proj.weight": (c, inner), f"{prefix}.out_proj.bias": (c,)}

    t = "heatmap.transformer."
    for i in range(2):
        layer = f"{t}layers.{i}."
        out |= attention(layer + "self_attn", c) | attention(layer + "cross_attn_token_to_image", half)
        out |= attention(layer + "cross_attn_image_to_token", half)
        out |= {layer + "mlp.lin1.weight": (2048, c), layer + "mlp.lin1.bias": (2048,), layer + "mlp.lin2.weight": (c, 2048),
                layer + "mlp.lin2.bias": (c,), **{f"{layer}norm{k}.{w}": (c,) for k in range(1, 5) for w in ("weight", "bias")}}
    out |= attention(t + "final_attn_token_to_image", half) | {t + "norm_final_attn.weight": (c,), t + "norm_final_attn.bias": (c,)}
    up = "heatmap.output_upscaling."
    out |= {"heatmap.mask_tokens.weight": (1, c), up + "conv_layers.0.weight": (c, c, 3, 3), up + "conv_layers.0.bias": (c,),
            up + "conv_layers.2.scale": (c, 1, 1), up + "conv_layers.3.weight": (half, c, 3, 3), up + "conv_layers.3.bias": (half,),
            up + "conv_layers.5.scale": (half, 1, 1), up + "last_conv1.weight": (192, 192, 3, 3), up + "last_conv1.bias": (192,)}
    for i, (a, b) in enumerate([(384, 768), (768, 384), (384, 384), (384, 192)]):
        out |= {f"{up}deconv_layers.{i}.0.weight": (a, b, 3, 3), f"{up}deconv_layers.{i}.0.bias": (b,),
                f"{up}deconv_layers.{i}.1.scale": (b, 1, 1)}
        for k in (0, 3):
            out |= {f"{up}conv_layers2.{i}.{k}.weight": (b, b, 3, 3), f"{up}conv_layers2.{i}.{k}.bias": (b,)}
        out |= {f"{up}conv_layers2.{i}.1.scale": (b, 1, 1), f"{up}conv_layers2.{i}.4.scale": (b, 1, 1)}
    hyper = "heatmap.output_hypernetworks_mlps.0.layers."
    out |= {hyper + "0.weight": (c, c), hyper + "0.bias": (c,), hyper + "1.weight": (c, c), hyper + "1.bias": (c,),
            hyper + "2.weight": (192, c), hyper + "2.bias": (192,)}
    return out


@pytest.mark.parametrize("config,hidden", [(QWEN2_5_VL_3B, 2048), (QWEN2_5_VL_7B, 3584)], ids=["3B", "7B"])
def test_head_keys_and_shapes_at_real_dimensions(config, hidden):
    with torch.device("meta"):
        doctor = ImageDoctor(Qwen2_5_VL(VLMConfig.from_dict(config)), DoctorConfig(151665, 151666))
    got = {k: tuple(v.shape) for k, v in doctor.head_state().items()}
    assert got == imagedoctor_head_shapes(hidden)
    assert not any(k.startswith("backbone.") for k in got)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tok = make_vlm_tokenizer(CORPUS, vocab_size=400, extra_special_tokens=TASK_TOKENS)
    torch.manual_seed(0)
    backbone = init_weights(Qwen2_5_VL(tiny_vlm_config(tok)), 0.1, 0)
    ids = [tok.tok.token_to_id(t) for t in TASK_TOKENS]
    return tok, ImageDoctor(backbone, DoctorConfig(*ids, heatmap_weight=0.5, heatmap=TINY_HEAD))


def judged(tok, doctor, sizes, seed=0, tokens=TASK_TOKENS):
    """A prompt with one image and a judgement after it -> (input_ids (1, T), prompt)."""
    prompt = images_prompt(tok, doctor.backbone.vlm_config, sizes, seed)
    text = render_judgement({"alignment": 0.5, "aesthetics": 0.5, "plausibility": 1, "overall": 0.6}, [(1, 2, 30, 40)],
                            "The circle is blue, not red.", tokens)
    ids = prompt.input_ids + tok.encode(text)
    return torch.tensor([ids]), prompt


def test_forward_gives_an_image_sized_map_per_task_in_0_1_and_gradients_flow(tiny):
    tok, doctor = tiny
    ids, prompt = judged(tok, doctor, [(56, 84)])
    hidden, maps = doctor(ids, [prompt])
    (h, w) = prompt.image_grid_thw[0, 1:].tolist()
    assert maps.maps[0].shape == (2, h * 14, w * 14) == (2, 56, 84)  # the preprocessed image's pixels
    assert maps.found.tolist() == [[True, True]]
    m = maps.maps[0].detach()
    assert 0 <= float(m.min()) and float(m.max()) <= 1 and float(m.std()) > 0
    assert not torch.equal(m[0], m[1])  # two different prompts, two maps
    _, native = doctor(ids, [prompt], native=True)
    assert native.maps[0].shape == (2, 2 * 16, 3 * 16)  # 16x the merged-token grid (ImageDoctor: 18 -> 288)
    loss = heatmap_loss(maps, [torch.zeros(2, 56, 84)], doctor.cfg.heatmap_weight)
    loss.backward()
    for module in (doctor.text_hidden_fcs, doctor.image_hidden_fcs, doctor.heatmap, doctor.backbone.layers[-1]):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    doctor.zero_grad()


def test_the_map_reads_the_hidden_state_that_emits_the_task_token(tiny):
    tok, doctor = tiny
    ids, _ = judged(tok, doctor, [(56, 56)])
    at = ids[0].tolist().index(doctor.cfg.misalignment_token_id)
    assert emitting_row(ids[0], doctor.cfg.misalignment_token_id) == at - 1
    assert emitting_row(torch.tensor([5, 6, 7]), doctor.cfg.misalignment_token_id) is None


def test_a_missing_task_token_gives_a_zero_map_and_a_batch_equals_each_row(tiny):
    tok, doctor = tiny
    a_ids, a = judged(tok, doctor, [(56, 84)], seed=1)
    b_ids, b = judged(tok, doctor, [(84, 56)], seed=2, tokens=("none", TASK_TOKENS[1]))
    t = max(a_ids.shape[1], b_ids.shape[1])
    batch = torch.stack([torch.nn.functional.pad(x[0], (0, t - x.shape[1])) for x in (a_ids, b_ids)])
    with torch.no_grad():
        _, maps = doctor(batch, [a, b])
        _, alone = doctor(a_ids, [a])
    assert maps.found.tolist() == [[True, True], [False, True]]
    assert maps.maps[1][0].abs().sum() == 0 and maps.maps[1][1].shape == (84, 56)
    torch.testing.assert_close(maps.maps[0], alone.maps[0], atol=1e-5, rtol=1e-5)


def test_save_and_load_in_the_hugging_face_layout(tiny, tmp_path):
    tok, doctor = tiny
    path = save_doctor(doctor, tmp_path / "doctor", tok)
    config = json.loads((path / "config.json").read_text())
    assert config["misalignment_token_id"] == doctor.cfg.misalignment_token_id and config["heatmap_weight"] == 0.5
    loaded = load_doctor(path, "cpu")
    ids, prompt = judged(tok, doctor, [(56, 84)])
    with torch.no_grad():
        want, got = doctor(ids, [prompt]), loaded(ids, [prompt])
    torch.testing.assert_close(got[1].maps[0], want[1].maps[0])
    torch.testing.assert_close(got[0], want[0])
    config["imagedoctor_heatmap"]["dim"] = 64
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(Exception, match="heatmap head"):
        load_doctor(path, "cpu")
    del config["artifact_token_id"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(Exception, match="artifact_token_id"):
        load_doctor(path, "cpu")


def test_the_ablation_judge_without_task_tokens_saves_and_loads_as_itself(tiny, tmp_path):
    """Its learned queries were not saved and it loaded as a plain ImageDoctor, whose maps then came
    from whatever hidden states held the placeholder token ids (usually none: all-zero maps)."""
    from reasonrl.reward.imagedoctor.build import NoTaskTokenDoctor

    tok, doctor = tiny
    ablation = NoTaskTokenDoctor(doctor.backbone, doctor.cfg)
    with torch.no_grad():
        ablation.task_queries.normal_()
    loaded = load_doctor(save_doctor(ablation, tmp_path / "ablation", tok), "cpu")
    assert type(loaded) is NoTaskTokenDoctor and torch.equal(loaded.task_queries, ablation.task_queries)
    ids, prompt = judged(tok, doctor, [(56, 84)], tokens=("x", "y"))  # no task token in the text
    with torch.no_grad():
        want, got = ablation(ids, [prompt])[1], loaded(ids, [prompt])[1]
    assert bool(got.found.all()) and float(got.maps[0].sum()) > 0
    torch.testing.assert_close(got.maps[0], want.maps[0])


@pytest.mark.parametrize("key,value,named", [
    ("imagedoctor_heatmap", {"dim": 32, "bogus": 1}, "imagedoctor_heatmap.bogus: unknown key"),
    ("imagedoctor_heatmap", {"dim": 30}, "imagedoctor_heatmap: HeatmapConfig.dim 30"),
    ("imagedoctor_heatmap", "wide", "imagedoctor_heatmap: expected dict"),
    ("heatmap_weight", None, "heatmap_weight: expected float, got None"),
], ids=["unknown-key", "bad-size", "not-a-dict", "no-weight"])
def test_a_malformed_config_is_refused_naming_the_file_and_key(tiny, tmp_path, key, value, named):
    """A bad head config or weight raised a bare TypeError that named neither the file nor the key."""
    from reasonrl.models.loader import CheckpointError

    tok, doctor = tiny
    path = save_doctor(doctor, tmp_path / "doctor", tok)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, key: value}))
    with pytest.raises(CheckpointError) as refused:
        load_doctor(path, "cpu")
    assert str(refused.value).startswith(f"{path / 'config.json'}: {named}")


def test_a_directory_without_a_checkpoint_is_refused_by_name(tmp_path):
    """`--judge` or `--scalar-judge` naming a wrong directory: the path and what was expected, not a bare read error."""
    with pytest.raises(FileNotFoundError, match=f"no config.json in {tmp_path / 'nope'} \\(expected an ImageDoctor"):
        load_doctor(tmp_path / "nope")
