"""The image models that ship with reasonrl (built by `python -m reasonrl.vision.gen.build`) load
and work: the tokenizer reconstructs held-out scenes, `reasonrl generate-image` writes PNGs with
them, the same seed gives the same pictures, and shipping halves the weights without changing
what the tokenizer computes beyond float16 rounding."""

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from reasonrl.cli import main
from reasonrl.vision.binary.measure import measure_tokenizer
from reasonrl.vision.binary.tokenizer import BitTokenizer, TokenizerConfig
from reasonrl.vision.binary.train_tokenizer import HELD_OUT_SEED
from reasonrl.vision.gen.build import STAGES, command, ship
from reasonrl.vision.gen.images import ImageConfig, make_images, to_tensor
from reasonrl.vision.gen.io import SHIPPED, WEIGHTS, load_model_dir, save_model_dir
from reasonrl.vision.world import read_png

PROMPTS = ["a large red circle at the top left", "a blue square left of a green triangle"]


def test_shipped_tokenizer_reconstructs_held_out_scenes():
    tok = load_model_dir(SHIPPED / "tokenizer", expect="bit_tokenizer")
    held = make_images(ImageConfig(), 64, HELD_OUT_SEED)
    m = measure_tokenizer(tok, held)
    assert m["bits"] == 256
    # what the build's model measured in float32 on these 64 images: 25.93 dB, 2x 21.54 dB, usage
    # 0.914 (25.42 dB on the 256 held-out images of docs/benchmarks.md); float16 shipping and loading
    # must not move it, and a broken load lands near the 14.9 dB of a flat grey image (a model that
    # paints only backgrounds: about 19)
    assert abs(m["psnr"] - 25.93) < 0.2 and abs(m["psnr_2x"] - 21.54) < 0.2
    assert abs(m["usage_entropy"] - 0.914) < 0.03


def test_generate_image_writes_pngs_reproducibly(tmp_path):
    def run(out, method):
        option = ["--steps", "5"] if method == "diffusion" else ["--temperature", "0.8"]  # (each refuses the other's)
        argv = ["generate-image", "--prompts", *PROMPTS, "--model", str(SHIPPED / method), "--out", str(out),
                "--per-prompt", "2", "--grid", *option, "--seed", "3"]
        assert main(argv) == 0
        return [read_png(out / f"{k:04d}.png") for k in range(4)]

    first = run(tmp_path / "a", "diffusion")
    assert all(im.shape == (32, 32, 3) and im.dtype == np.uint8 for im in first)
    assert (tmp_path / "a" / "grid.png").is_file()
    index = [json.loads(line) for line in (tmp_path / "a" / "prompts.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in index] == [p for p in PROMPTS for _ in range(2)]
    assert all(np.array_equal(a, b) for a, b in zip(first, run(tmp_path / "b", "diffusion")))
    assert not np.array_equal(first[0], first[1])  # two draws of one prompt differ
    assert len(run(tmp_path / "c", "ar")) == 4


def test_no_prompts_is_a_clear_error(tmp_path, monkeypatch, capsys):
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main(["generate-image", "--out", str(tmp_path)]) != 0
    assert "no prompts" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_a_bad_size_is_refused_before_overwrite_deletes_the_earlier_images(tmp_path, capsys):
    """--overwrite deleted them, then the size failed after generating everything."""
    out = str(tmp_path)
    assert main(["generate-image", "--prompts", PROMPTS[0], "--steps", "1", "--out", out]) == 0
    assert main(["generate-image", "--prompts", PROMPTS[0], "--steps", "1", "--size", "50", "--overwrite",
                 "--out", out]) == 2
    assert "decode size 50x50" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0000.png", "prompts.jsonl"]


def test_ship_halves_weights_and_keeps_the_model(tmp_path):
    torch.manual_seed(0)
    cfg = TokenizerConfig(encoder_layers=1, decoder_layers=1, encoder_head_dim=8, decoder_head_dim=8,
                          encoder_num_heads=2, decoder_num_heads=2, axes_dims_rope=(2, 2, 4), num_latent_tkns=2,
                          codebook_size=4, patch_size=8)
    tok = BitTokenizer(cfg).eval()
    save_model_dir(tok, cfg, tmp_path / "runs" / "tokenizer")
    (tmp_path / "runs" / "tokenizer" / "checkpoints").mkdir()
    ship(tmp_path / "runs", stages=("tokenizer",), to=tmp_path / "shipped")
    shipped = tmp_path / "shipped" / "tokenizer"
    assert sorted(p.name for p in shipped.iterdir()) == ["config.json", WEIGHTS]
    assert all(v.dtype == torch.float16 for v in load_file(str(shipped / WEIGHTS)).values())
    back = load_model_dir(shipped, expect="bit_tokenizer")
    x = to_tensor(make_images(ImageConfig(), 4, 0).images)
    assert torch.allclose(back(x)[0], tok(x)[0], atol=2e-2)


def _fake_model(path, marker: str) -> None:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"kind": marker}))
    save_file({"w": torch.ones(2)}, str(path / WEIGHTS))


def test_build_ships_only_its_stages_and_replaces_nothing_when_one_is_unfinished(tmp_path, monkeypatch, capsys):
    from reasonrl.vision.gen import build

    runs, shipped = tmp_path / "runs", tmp_path / "shipped"
    for stage in ("tokenizer", "smarli", "grpo"):
        _fake_model(shipped / stage, "old")
    _fake_model(runs / "grpo", "new")  # smarli was not trained
    monkeypatch.setattr(build, "run_stage", lambda stage, out: 0)
    monkeypatch.setattr(build, "SHIPPED", shipped)
    with pytest.raises(SystemExit, match="stages: smarli;"):
        build.main(["--out", str(runs), "--only", "smarli,grpo", "--ship"])
    kinds = {s: json.loads((shipped / s / "config.json").read_text())["kind"] for s in ("tokenizer", "smarli", "grpo")}
    assert kinds == {"tokenizer": "old", "smarli": "old", "grpo": "old"}
    _fake_model(runs / "smarli", "new")
    assert build.main(["--out", str(runs), "--only", "smarli,grpo", "--ship"]) == 0
    kinds = {s: json.loads((shipped / s / "config.json").read_text())["kind"] for s in ("tokenizer", "smarli", "grpo")}
    assert kinds == {"tokenizer": "old", "smarli": "new", "grpo": "new"}  # the tokenizer was not in --only
    assert sorted(p.name for p in shipped.iterdir()) == ["grpo", "smarli", "tokenizer"]  # no temporary folders left


def test_build_commands_are_train_image_commands(tmp_path):
    argv = command("ar", tmp_path)
    assert argv[:3] == ["train-image", "generator", "--method"] and argv[-2:] == ["--out", str(tmp_path / "ar")]
    assert str(tmp_path / "tokenizer") in argv and set(STAGES) >= {"tokenizer", "diffusion", "smarli", "grpo"}


def test_a_rerun_of_the_build_skips_its_finished_text_stage(tmp_path, monkeypatch, capsys):
    from reasonrl.vision.gen import build

    monkeypatch.setitem(build.STAGES, "text", ["text", "--hidden-size", "32", "--num-layers", "2", "--num-heads", "2",
                                               "--prompts-per-step", "4", "--steps", "2"])
    assert build.main(["--out", str(tmp_path), "--only", "text"]) == 0
    weights = (tmp_path / "text" / WEIGHTS).read_bytes()
    capsys.readouterr()
    assert build.main(["--out", str(tmp_path), "--only", "text"]) == 0
    assert "this run is finished" in capsys.readouterr().err and (tmp_path / "text" / WEIGHTS).read_bytes() == weights


def test_bench_image_gen_scores_the_tokenizer_ceiling_once_per_tokenizer(tmp_path):
    import shutil

    from reasonrl.vision.binary.bench import GenBenchConfig, bench_generators
    from reasonrl.vision.binary.measure import reconstruct
    from reasonrl.vision.gen.geneval import geneval

    def ceilings(models):
        rows = bench_generators(GenBenchConfig(models=[str(m) for m in models], prompts=4))
        assert rows[0]["model"] == "real renders" and len([r for r in rows if "kind" in r]) == len(models)
        return [r for r in rows[1:] if "kind" not in r]

    # the shipped pair shares one tokenizer (both say "../tokenizer"): one ceiling row, and it is the
    # held-out renders' reconstructions scored by GenEval-lite
    shared = ceilings([SHIPPED / "ar", SHIPPED / "diffusion"])
    held = make_images(ImageConfig(), 4, HELD_OUT_SEED + 7)
    _, recon = reconstruct(load_model_dir(SHIPPED / "tokenizer", expect="bit_tokenizer"), held.images)
    assert len(shared) == 1 and {k: shared[0][k] for k in geneval(held.scenes, recon)} == geneval(held.scenes, recon)
    # a copy of the set with its own tokenizer folder: two tokenizers, two rows
    copy = tmp_path / "copy"
    for name in ("ar", "text", "tokenizer"):
        shutil.copytree(SHIPPED / name, copy / name)
    assert len(ceilings([SHIPPED / "ar", copy / "ar"])) == 2
    # the same generator named by a relative and an absolute path: still one tokenizer
    rel = os.path.relpath(copy / "ar")
    assert len(ceilings([rel, (copy / "ar").resolve()])) == 1


def test_a_generator_refuses_a_tokenizer_retrained_in_place(tmp_path, recwarn):
    """A tokenizer retrained in place (other weights, or other K) decoded the generator's bits silently."""
    from reasonrl.vision.binary.generator import load_pipeline
    from reasonrl.vision.binary.train_generator import GeneratorJob, GeneratorTrainConfig

    cfg = TokenizerConfig(encoder_layers=1, decoder_layers=1, encoder_head_dim=8, decoder_head_dim=8,
                          encoder_num_heads=2, decoder_num_heads=2, axes_dims_rope=(2, 2, 4), num_latent_tkns=2,
                          codebook_size=4, patch_size=8)
    torch.manual_seed(0)
    save_model_dir(BitTokenizer(cfg), cfg, tmp_path / "tokenizer")
    train = GeneratorTrainConfig(text_model=str(SHIPPED / "text"), image_tokenizer=str(tmp_path / "tokenizer"), width=16,
                                 num_heads=2, steps=1, prompts_per_step=2, eval_prompts=2)
    GeneratorJob(train, ImageConfig()).save(tmp_path / "gen")
    load_pipeline(tmp_path / "gen")
    assert not recwarn.list
    torch.manual_seed(1)  # the same config, retrained: other weights
    save_model_dir(BitTokenizer(cfg), cfg, tmp_path / "tokenizer")
    with pytest.raises(ValueError, match="not the tokenizer the generator was trained on"):
        load_pipeline(tmp_path / "gen")
    other = TokenizerConfig(**{**cfg.__dict__, "num_latent_tkns": 4})
    save_model_dir(BitTokenizer(other), other, tmp_path / "tokenizer")
    with pytest.raises(ValueError, match="4 tokens of 4 bits"):
        load_pipeline(tmp_path / "gen")
    config = json.loads((tmp_path / "gen" / "config.json").read_text())
    del config["image_tokenizer_digest"]  # a generator saved before the digest: loads, with a warning
    (tmp_path / "gen" / "config.json").write_text(json.dumps(config))
    torch.manual_seed(1)
    save_model_dir(BitTokenizer(cfg), cfg, tmp_path / "tokenizer")
    with pytest.warns(UserWarning, match="no tokenizer digest"):
        load_pipeline(tmp_path / "gen")


def test_the_shipped_generators_pin_the_shipped_tokenizer_through_float16_shipping(tmp_path, recwarn):
    from reasonrl.vision.binary.generator import load_pipeline, tokenizer_digest

    for name in ("ar", "diffusion"):
        load_pipeline(SHIPPED / name)
    assert not recwarn.list
    torch.manual_seed(0)
    cfg = TokenizerConfig(encoder_layers=1, decoder_layers=1, encoder_head_dim=8, decoder_head_dim=8,
                          encoder_num_heads=2, decoder_num_heads=2, axes_dims_rope=(2, 2, 4), num_latent_tkns=2,
                          codebook_size=4, patch_size=8)
    tok = BitTokenizer(cfg)
    save_model_dir(tok, cfg, tmp_path / "runs" / "tokenizer")
    ship(tmp_path / "runs", stages=("tokenizer",), to=tmp_path / "shipped")
    assert tokenizer_digest(load_model_dir(tmp_path / "shipped" / "tokenizer")) == tokenizer_digest(tok)


def test_bench_image_gen_writes_one_grid_per_model_even_of_one_class(tmp_path):
    """Two AR generators wrote one PREFIX_BitAR.png, the second over the first."""
    from reasonrl.vision.binary.bench import GenBenchConfig, bench_generators

    bench_generators(GenBenchConfig(models=[str(SHIPPED / "ar")] * 2, prompts=2, grid=str(tmp_path / "gen")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen_0.png", "gen_1.png"]


def test_generate_image_refuses_an_earlier_runs_images_unless_overwrite(tmp_path, capsys):
    """Fewer prompts into the same --out left the earlier run's extra PNGs beside the new prompts.jsonl."""
    argv = ["generate-image", "--model", str(SHIPPED / "diffusion"), "--out", str(tmp_path), "--steps", "2"]
    (tmp_path / "notes.png").write_text("mine")
    assert main([*argv, "--prompts", *PROMPTS, "--grid"]) == 0
    assert main([*argv, "--prompts", PROMPTS[0]]) == 2 and "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--prompts", PROMPTS[0], "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0000.png", "notes.png", "prompts.jsonl"]


@pytest.mark.parametrize("flags, key", [(["--guidance", "nan"], "guidance"), (["--temperature", "nan"], "temperature"),
                                        (["--size", "0"], "size")])
def test_degenerate_sampling_flags_are_refused_by_name(tmp_path, capsys, flags, key):
    """NaN guidance or temperature wrote images; --size 0 silently meant the default."""
    out = tmp_path / "out"
    assert main(["generate-image", "--prompts", PROMPTS[0], "--out", str(out), *flags]) == 2
    assert key in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("argv, key", [(["smarli", "--models", str(SHIPPED / "smarli"), "--sample-steps", "0"], "sample_steps"),
                                       (["smarli", "--models", str(SHIPPED / "smarli"), "--layouts", "0"], "layouts"),
                                       (["smarli", "--models", str(SHIPPED / "smarli"), "--pairs", "0"], "pairs"),
                                       (["image-tokenizer", "--models", str(SHIPPED / "tokenizer"), "--eval-images", "0"],
                                        "eval_images"),
                                       (["image-gen", "--prompts", "0"], "prompts"),
                                       (["image-gen", "--guidance", "nan"], "guidance")])
def test_degenerate_bench_sizes_are_refused_by_name(capsys, argv, key):
    """An all-zero table, or a numpy/torch error about stacking nothing."""
    assert main(["bench", *argv]) == 2 and key in capsys.readouterr().err


def test_a_directory_of_another_kind_says_what_it_holds_and_what_was_needed(tmp_path, capsys):
    assert main(["train-image", "layout-grpo", "--policy", str(SHIPPED / "diffusion"), "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err
    assert "diffusion bit generator" in err and "SMARLI model" in err and "import the module" not in err
