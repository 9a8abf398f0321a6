"""Counts the image commands cannot work with are refused by name before the run directory exists.

They used to pass validation and fail later (`max()` of an empty batch, the covariance of one row,
a layout overflowing its slots) with errors naming no flag, after config.yaml was written, so the
corrected rerun was refused as a changed config; `--steps 0` saved an untrained model."""

import numpy as np
import pytest

from reasonrl.cli import main
from reasonrl.vision.gen.geneval import frechet_distance
from reasonrl.vision.gen.io import SHIPPED

# small enough that the old code, which accepted these counts, ran to its failure in seconds
GENERATOR = ["train-image", "generator", "--text-model", str(SHIPPED / "text"), "--image-tokenizer",
             str(SHIPPED / "tokenizer"), "--width", "16", "--num-heads", "2", "--steps", "1", "--prompts-per-step", "2",
             "--eval-prompts", "2"]
REALISM = ["train-image", "realism", "--policy", str(SHIPPED / "smarli"), "--steps", "1", "--generated", "2",
           "--images-per-step", "2"]
SMARLI = ["train-image", "smarli", "--width", "16", "--num-heads", "2", "--num-layers", "1", "--steps", "1",
          "--layouts-per-step", "2", "--eval-layouts", "2", "--sample-steps", "1"]


@pytest.mark.parametrize("argv, flags, key", [
    (GENERATOR, ["--eval-prompts", "0"], "eval_prompts"),
    (GENERATOR, ["--eval-prompts", "1"], "eval_prompts"),
    (GENERATOR, ["--prompts-per-step", "0"], "prompts_per_step"),
    (GENERATOR, ["--steps", "0"], "steps"),
    (REALISM, ["--images-per-step", "1"], "images_per_step"),
    (REALISM, ["--generated", "0"], "generated"),
    (REALISM, ["--steps", "0"], "steps"),
    (["train-image", "text", "--steps", "1"], ["--vocab-size", "100"], "vocab_size"),
    (SMARLI, ["--codebook-scenes", "1"], "codebook_scenes"),
])
def test_bad_counts_are_refused_by_name_before_the_run_directory_is_made(tmp_path, capsys, argv, flags, key):
    out = tmp_path / "run"
    assert main([*argv, *flags, "--out", str(out)]) == 2
    assert key in capsys.readouterr().err and not out.exists()


def test_bench_image_gen_needs_two_prompts(capsys):
    assert main(["bench", "image-gen", "--models", str(SHIPPED / "diffusion"), "--prompts", "1"]) == 2
    assert "prompts must be an integer >= 2" in capsys.readouterr().err


def test_the_frechet_distance_of_one_row_is_a_named_error():
    rows = np.random.default_rng(0).random((3, 4))
    assert frechet_distance(rows, rows) == pytest.approx(0, abs=1e-6)
    with pytest.raises(ValueError, match="at least 2 rows"):
        frechet_distance(rows[:1], rows)
