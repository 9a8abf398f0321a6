"""Image training runs use the run machinery of `reasonrl train`: checkpoints, resume, stop, refusal."""

import json
import os
import signal

import pytest
import torch

from reasonrl.rl.checkpoint import latest_checkpoint
from reasonrl.rl.run import RunMismatch
from reasonrl.rl.train import RunControl
from reasonrl.vision.binary.tokenizer import TokenizerConfig
from reasonrl.vision.binary.train_tokenizer import TokenizerJob, TokenizerTrainConfig
from reasonrl.vision.gen.images import ImageConfig
from reasonrl.vision.gen.io import load_model_dir
from reasonrl.vision.gen.run import RunSettings, run_job

MODEL = TokenizerConfig(encoder_layers=1, decoder_layers=1, encoder_head_dim=8, decoder_head_dim=8, encoder_num_heads=2,
                        decoder_num_heads=2, axes_dims_rope=(2, 2, 4), num_latent_tkns=2, codebook_size=4, patch_size=8)


def job(steps: int, stop_at: int | None = None) -> TokenizerJob:
    j = TokenizerJob(MODEL, TokenizerTrainConfig(steps=steps, images_per_step=4, eval_images=4, warmup_steps=1), ImageConfig())
    return interrupt_at(j, stop_at)


def interrupt_at(j, stop_at: int | None):
    """`j`, with Ctrl-C arriving during step `stop_at` (None: never)."""
    if stop_at is not None:
        step = j.train_step

        def interrupted():
            if j.step_count + 1 == stop_at:
                os.kill(os.getpid(), signal.SIGINT)
            return step()

        j.train_step = interrupted
    return j


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_run_checkpoints_stops_resumes_and_reports(tmp_path):
    run = RunSettings(out=str(tmp_path / "run"), save_every=2)
    config = {"model": "tiny", "steps": 4}
    assert run_job(job(4, stop_at=3), run, config, console=False) == 128 + signal.SIGINT
    assert latest_checkpoint(tmp_path / "run").name == "step_000003"  # the stopped step was saved
    assert [r["step"] for r in records(tmp_path / "run")] == [0, 1, 2, 3]
    resumed = job(4)
    assert run_job(resumed, run, config, console=False) == 0
    assert resumed.step_count == 4
    assert [r["step"] for r in records(tmp_path / "run")] == [0, 1, 2, 3, 4]
    assert "eval_psnr" in records(tmp_path / "run")[-1]
    assert (tmp_path / "run" / "report.md").is_file()
    assert load_model_dir(tmp_path / "run").config == MODEL
    finished = job(4)
    assert run_job(finished, run, config, console=False) == 0 and finished.step_count == 4  # nothing to do


def test_a_changed_config_is_refused_unless_accepted(tmp_path):
    run = RunSettings(out=str(tmp_path / "run"))
    assert run_job(job(1), run, {"steps": 1}, console=False) == 0
    with pytest.raises(RunMismatch, match="steps"):
        run_job(job(2), run, {"steps": 2}, console=False)
    longer = job(2)
    assert run_job(longer, run, {"steps": 2}, RunControl(accept_changes=True), console=False) == 0
    assert longer.step_count == 2


def test_an_accepted_rerun_refused_on_the_way_leaves_the_config_as_it_was(tmp_path):
    """The saved config was rewritten (and the change recorded) before the checkpoint failed to load."""
    from dataclasses import replace

    run = RunSettings(out=str(tmp_path / "run"))
    assert run_job(job(1), run, {"model": "tiny", "steps": 1}, console=False) == 0
    saved = (tmp_path / "run" / "config.yaml").read_bytes()
    bigger = TokenizerJob(replace(MODEL, encoder_layers=2), TokenizerTrainConfig(steps=2, images_per_step=4,
                                                                                 eval_images=4), ImageConfig())
    with pytest.raises(ValueError, match="missing tensors"):  # the checkpoint has one encoder layer
        run_job(bigger, run, {"model": "two layers", "steps": 2}, RunControl(accept_changes=True), console=False)
    assert (tmp_path / "run" / "config.yaml").read_bytes() == saved
    assert not (tmp_path / "run" / "config_changes.jsonl").exists()


def test_run_settings_are_checked():
    with pytest.raises(ValueError, match="save_every"):
        RunSettings(out="x", save_every=0)


TEXT = ["--hidden-size", "32", "--num-layers", "2", "--num-heads", "2", "--prompts-per-step", "4", "--steps", "4"]


def test_train_image_text_is_a_run_a_rerun_skips_and_a_change_is_refused(tmp_path, capsys):
    from reasonrl.cli import main
    from reasonrl.vision.binary.conditioner import TextEncoder

    out = tmp_path / "text"
    assert main(["train-image", "text", *TEXT, "--out", str(out)]) == 0
    assert (out / "config.yaml").is_file() and latest_checkpoint(out).name == "step_000004"
    assert [r["step"] for r in records(out)] == [0, 1, 2, 3, 4] and "eval_loss" in records(out)[-1]
    assert TextEncoder.from_dir(out).num_layers == 2
    weights = (out / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["train-image", "text", *TEXT, "--out", str(out)]) == 0  # finished: not trained again
    assert "this run is finished" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == weights and len(records(out)) == 5
    assert main(["train-image", "text", *TEXT, "--lr", "1e-2", "--out", str(out)]) == 2
    assert "train.lr" in capsys.readouterr().err and (out / "model.safetensors").read_bytes() == weights


def test_a_stopped_text_run_resumes_to_the_uninterrupted_weights(tmp_path):
    from safetensors.torch import load_file

    from reasonrl.vision.binary.conditioner import TextJob, TextTrainConfig

    def text_job(stop_at=None):
        cfg = TextTrainConfig(hidden_size=32, num_layers=2, num_heads=2, prompts_per_step=4, steps=4)
        return interrupt_at(TextJob(cfg, ImageConfig()), stop_at)

    config = {"steps": 4}
    straight = RunSettings(out=str(tmp_path / "straight"))
    assert run_job(text_job(), straight, config, console=False) == 0
    stopped = RunSettings(out=str(tmp_path / "stopped"), save_every=10)
    assert run_job(text_job(stop_at=2), stopped, config, console=False) == 128 + signal.SIGINT
    assert latest_checkpoint(tmp_path / "stopped").name == "step_000002"
    assert run_job(text_job(), stopped, config, console=False) == 0
    a, b = (load_file(str(tmp_path / run / "model.safetensors")) for run in ("straight", "stopped"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
