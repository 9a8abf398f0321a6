"""LVR's SFT on shapes-world detail questions and its measurements (vision/lvr/train.py,
evaluate.py, experiment.py) on a tiny random Qwen2.5-VL with LVR's tokens, fp32 on CPU."""

import json

import pytest
import torch

from reasonrl.engine.latent import EXIT_KEY, FEEDBACK_KEY, SCALE_KEY, LatentConfig, Latents
from reasonrl.engine.sequence import CompletionOutput
from reasonrl.models import Tokenizer, load_model
from reasonrl.models.qwen2_5_vl import MultimodalPrompt
from reasonrl.models.tiny_vlm import LVR_TOKENS, make_vlm_checkpoint, make_vlm_tokenizer
from reasonrl.vision.lvr import evaluate as ev
from reasonrl.vision.lvr.env import LVRShapesConfig, LVRShapesEnvironment
from reasonrl.vision.lvr.sft import roi_tokens
from reasonrl.vision.lvr.train import LVRTrainConfig, make_examples, train_sft_lvr
from tests.models.vlm_common import CORPUS

ENV = LVRShapesEnvironment(LVRShapesConfig(image_size=112, max_objects=3))


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    tok = make_vlm_tokenizer(CORPUS + ["What colour are the stripes on the small red circle? striped solid"],
                             vocab_size=384, extra_special_tokens=LVR_TOKENS)
    return make_vlm_checkpoint(tmp_path_factory.mktemp("lvr_exp") / "ckpt", tok, seed=2, std=0.1)


@pytest.fixture(scope="module")
def setup(path):
    model, tok = load_model(path), Tokenizer.from_dir(path)
    latent = LatentConfig.from_tokenizer(tok)
    problems = ENV.problems(24)
    return model, tok, latent, problems, make_examples(model, tok, problems, latent, chunk=10)


def test_examples_hold_the_region_tokens_and_the_same_answer_twice(setup):
    model, tok, latent, problems, examples = setup
    for problem, ex in zip(problems, examples):
        assert ex.prompt.pixel_values.numel() == 0 and ex.image.shape == (len(ex.prompt.image_rows), model.config.hidden_size)
        grid = ex.prompt.image_grid_thw[0]
        assert ex.lvr.targets == roi_tokens(problem.row["roi"], problem.rendering.image.shape[:2], grid)
        span = ex.lvr.input_ids[ex.lvr.answer_start:ex.lvr.latent_rows[-1] + 2]
        assert span == [latent.start_id] + [latent.latent_id] * len(ex.lvr.targets) + [latent.end_id]
        answer = ex.plain.input_ids[ex.plain.answer_start:]
        assert ex.lvr.input_ids[ex.lvr.latent_rows[-1] + 2:] == answer
        assert tok.decode(answer) == f"\\boxed{{{problem.row['answer']}}}" and ex.plain.latent_rows == []
    with torch.no_grad():  # the cached tokens are the frozen tower's output
        from reasonrl.vision.lvr.data import lvr_example
        from reasonrl.vision.lvr.train import qa_item
        _, prompt = lvr_example(tok, model, problems[0].rendering.image, qa_item(problems[0]), latent)
        torch.testing.assert_close(examples[0].image, model.encode_images(prompt.pixel_values, prompt.image_grid_thw))


def test_lvr_sft_learns_the_region_tokens_and_records_its_scale(setup):
    model, tok, latent, problems, examples = setup
    lvr, plain = load_model_copy(model), load_model_copy(model)
    tower = {k: v.clone() for k, v in lvr.visual.state_dict().items()}
    history = train_sft_lvr(lvr, examples, LVRTrainConfig(steps=16, batch=4, lr=3e-3, warmup_steps=2, weight=1.0))
    assert sum(h["latent_mse"] for h in history[-4:]) < 0.7 * sum(h["latent_mse"] for h in history[:4])
    scale = lvr.vlm_config.raw[SCALE_KEY]
    region = torch.cat([e.image[e.lvr.targets] for e in examples])
    expected = region.pow(2).mean().sqrt() / model.norm.weight.detach().pow(2).mean().sqrt()
    assert scale == pytest.approx(float(expected), rel=1e-5) and lvr.vlm_config.raw[FEEDBACK_KEY] == "state"
    assert all(torch.equal(v, lvr.visual.state_dict()[k]) for k, v in tower.items())  # vision tower and merger frozen
    control = train_sft_lvr(plain, examples, LVRTrainConfig(latents=False, steps=3, batch=4))
    assert all(h["latent_mse"] == 0.0 for h in control) and SCALE_KEY not in plain.vlm_config.raw
    assert FEEDBACK_KEY not in plain.vlm_config.raw


def load_model_copy(model):
    import copy
    return copy.deepcopy(model)


def outputs_with_span(latent, n, lo=1, hidden=8):
    vectors = torch.randn(n, hidden)
    ids = [5] * lo + [latent.latent_id] * n + [latent.end_id, 7]
    return CompletionOutput(0, ids, [0.0] * len(ids), "", "stop", latents=Latents(list(range(lo, lo + n)), vectors))


def test_interventions_replace_the_first_span(setup):
    latent = setup[2]
    out, region = outputs_with_span(latent, 3), torch.randn(5, 8)
    image = torch.cat([region, torch.randn(4, 8)])
    item = ev.EvalItem(None, lambda text: 0.0, region, image)
    none = CompletionOutput(0, [5, 6], [0.0, 0.0], "", "stop", latents=Latents([], torch.zeros(0, 8)))
    gen = torch.Generator().manual_seed(0)
    zeros, noise, drawn, oracle = (ev.replace_span([item, item], [out, none], k, latent, gen)
                                   for k in ("zeros", "noise", "random_tokens", "oracle"))
    assert zeros[1] is None and noise[1] is None and drawn[1] is None and oracle[1] is None
    assert len(drawn[0][1].vectors) == 3 and all((image == v).all(-1).any() for v in drawn[0][1].vectors)
    assert zeros[0][0] == out.token_ids[:5] and torch.equal(zeros[0][1].vectors, torch.zeros(3, 8))
    torch.testing.assert_close(noise[0][1].vectors.norm(dim=1), out.latents.vectors.norm(dim=1))
    assert not torch.allclose(noise[0][1].vectors, out.latents.vectors)
    assert oracle[0][0] == [5] + [latent.latent_id] * 5 + [latent.end_id] and torch.equal(oracle[0][1].vectors, region)
    assert oracle[0][1].positions == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="unknown intervention"):
        ev.replace_span([item], [out], "shuffle", latent, gen)
    rec = ev.reconstruction([item], [CompletionOutput(0, out.token_ids, out.logprobs, "", "stop",
                                                      latents=Latents(out.latents.positions, region[:3] * 2))])
    assert rec["latent_cosine"] == pytest.approx(1.0) and rec["latent_outputs"] == 1.0 and rec["latent_top1"] == 1.0
    swapped = torch.stack([region[1], region[0], region[2]])  # the first two latents point at each other's token
    rec = ev.reconstruction([item], [CompletionOutput(0, out.token_ids, out.logprobs, "", "stop",
                                                      latents=Latents(out.latents.positions, swapped))])
    assert rec["latent_top1"] == pytest.approx(1 / 3) and rec["latent_cosine"] < 1.0 and rec["latent_in_region"] == 1.0
    outside = torch.stack([region[0], image[6], region[2]])  # the second latent points off the region
    rec = ev.reconstruction([item], [CompletionOutput(0, out.token_ids, out.logprobs, "", "stop",
                                                      latents=Latents(out.latents.positions, outside))])
    assert rec["latent_top1"] == pytest.approx(2 / 3) == rec["latent_in_region"]
    three = ev.EvalItem(None, lambda text: 0.0, region[:3], image)  # a region as long as the span of `out`
    assert ev.span_length([item, three, item], [out, out, none]) == {"latent_span": pytest.approx(2.0),
                                                                 "span_is_region": pytest.approx(1 / 3)}


def test_a_resumed_unchanged_span_decodes_the_same_answer(setup, path):
    """The causality check's path: cutting after the span and resuming with the same latents gives
    the uninterrupted output."""
    model, tok, latent, problems, examples = setup
    start = latent.start_id
    items = []
    for problem, ex in zip(problems[:3], examples):
        problem_prompt = make_prompt(model, tok, problem)
        items.append(ev.EvalItem(MultimodalPrompt.from_ids(problem_prompt.input_ids + [start], problem_prompt.pixel_values,
                                                           problem_prompt.image_grid_thw, model.vlm_config),
                                 lambda text: 0.0, ex.image[ex.lvr.targets], ex.image))
    outs = ev.generate(model, tok, items, 4)
    assert all(ev.first_span(o) == (0, 4) for o in outs)
    same = [(o.token_ids[:5], Latents(o.latents.positions[:4], o.latents.vectors[:4])) for o in outs]
    again = ev.generate(model, tok, items, 4, same)
    assert [o.token_ids for o in again] == [o.token_ids for o in outs]


def make_prompt(model, tok, problem):
    from reasonrl.models.chat import ChatEncoder, multimodal
    from reasonrl.envs.shapes import vqa_prompt
    return multimodal(ChatEncoder(tok, model)(vqa_prompt(problem).messages))


@pytest.mark.slow
def test_the_experiment_runs_end_to_end(tmp_path):
    """The one-command experiment at toy sizes from the embedded VLM: every figure is written."""
    from reasonrl.vision.lvr.experiment import LVRExperimentConfig, run_experiment

    cfg = LVRExperimentConfig(out=str(tmp_path / "lvr"), train_problems=16, eval_problems=4, sft_steps=2, batch=2,
                              grpo_steps=1, sweep=(4, 16))
    results = run_experiment(cfg, log=lambda text: None)
    saved = json.loads((tmp_path / "lvr" / "results.json").read_text())
    assert set(saved) >= {"sft_plain", "sft_lvr", "grpo", "config", "seconds"}
    assert set(saved["sft_lvr"]["by_steps"]) == {"4", "16"} and "accuracy_oracle" in saved["grpo"]
    for key in ("accuracy", "accuracy_zeros", "accuracy_noise", "accuracy_oracle"):
        assert 0.0 <= results["sft_lvr"][key] <= 1.0
    assert (tmp_path / "lvr" / "grpo" / "checkpoints").is_dir()
    assert json.loads((tmp_path / "lvr" / "sft-lvr" / "config.json").read_text())[SCALE_KEY] > 0


def test_the_shipped_recipe_is_the_experiment_grpo_stage():
    from pathlib import Path

    from reasonrl.rl.config import from_dict, load_config
    from reasonrl.vision.lvr.experiment import LVRExperimentConfig, grpo_recipe

    recipe = Path(__file__).parents[2] / "recipes" / "lvr-shapes.yaml"
    assert load_config(recipe).to_dict() == from_dict(grpo_recipe(LVRExperimentConfig(), "runs/lvr/sft-lvr")).to_dict()


def test_the_scene_settings_reach_the_sft_data_and_the_grpo_environment(monkeypatch, tmp_path):
    """--image-size, --min-objects and --max-objects: the same scenes for both SFT arms, the held-out
    questions and GRPO's environment."""
    from reasonrl.envs.registry import load_environment
    from reasonrl.vision.lvr import experiment

    cfg = experiment.LVRExperimentConfig(out=str(tmp_path), image_size=168, min_objects=5, max_objects=7)
    env = load_environment(experiment.grpo_recipe(cfg, "x")["env"]["name"])
    assert env.lvr == cfg.scenes() and (env.lvr.image_size, env.lvr.min_objects, env.lvr.max_objects) == (168, 5, 7)
    made = []

    def environment(scenes):  # the one environment every example comes from; stop there
        made.append(scenes)
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "LVRShapesEnvironment", environment)
    with pytest.raises(KeyboardInterrupt):
        experiment.run_experiment(cfg, log=lambda text: None)
    assert made == [cfg.scenes()]


def test_reasonrl_data_lvr_writes_the_training_examples_regions(setup, path, tmp_path):
    from reasonrl.cli import main

    examples = setup[4]
    assert main(["data", "lvr", "--n", "4", "--out", str(tmp_path), "--image-size", "112", "--max-objects", "3",
                 "--model", str(path)]) == 0
    rows = [json.loads(line) for line in (tmp_path / "lvr.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all((tmp_path / r["image"]).is_file() for r in rows)
    for row, ex in zip(rows, examples):
        assert row["roi_tokens"] == ex.lvr.targets
        assert row["response"] == ("<|lvr_start|>" + "<|lvr|>" * len(ex.lvr.targets) + "<|lvr_end|>"
                                   f"\\boxed{{{row['answer']}}}")


def test_reasonrl_data_lvr_refuses_an_earlier_runs_output_unless_overwrite(tmp_path, capsys):
    """A smaller rerun into the same --out left the first run's extra images beside a shorter
    lvr.jsonl, where `reasonrl data doctor` refuses."""
    from reasonrl.cli import main

    base = ["data", "lvr", "--out", str(tmp_path), "--image-size", "112", "--max-objects", "3"]
    (tmp_path / "notes.txt").write_text("mine")
    assert main([*base, "--n", "3"]) == 0
    assert main([*base, "--n", "1"]) == 2 and "--overwrite" in capsys.readouterr().err
    assert len((tmp_path / "lvr.jsonl").read_text().splitlines()) == 3
    assert main([*base, "--n", "1", "--overwrite"]) == 0
    assert len((tmp_path / "lvr.jsonl").read_text().splitlines()) == 1
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["lvr_000000.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "lvr.jsonl", "notes.txt"]  # no .partial left


@pytest.mark.slow
def test_the_latent_inputs_flag_reaches_the_lvr_loss(path, tmp_path, monkeypatch):
    """`--latent-inputs own --own-passes 2 --pointer-weight 0.5 --latent-feedback image_token --latent-exit end_token`
    on the experiment's command line reach lvr_sft_loss and the checkpoint."""
    from reasonrl.vision.lvr import experiment, train

    seen, real = [], train.lvr_sft_loss

    def spy(*args, **kwargs):
        seen.append(tuple(kwargs[k] for k in ("latent_inputs", "own_passes", "pointer_weight", "feedback", "pointer_target",
                                                "exit")))
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "lvr_sft_loss", spy)
    out = tmp_path / "own"
    assert experiment.main(["--out", str(out), "--base", str(path), "--train-problems", "4", "--eval-problems", "1",
                            "--sft-steps", "2", "--batch", "2", "--arms", "lvr", "--stages", "sft", "--sweep", "4",
                            "--latent-inputs", "own", "--own-passes", "2", "--pointer-weight", "0.5",
                            "--latent-feedback", "image_token", "--pointer-target", "region",
                            "--latent-exit", "end_token"]) == 0
    assert seen == [("own", 2, 0.5, "image_token", "region", "end_token")] * 2
    saved = json.loads((out / "results.json").read_text())
    assert saved["config"]["latent_inputs"] == "own" and saved["config"]["own_passes"] == 2
    recorded = json.loads((out / "sft-lvr" / "config.json").read_text())
    assert recorded[FEEDBACK_KEY] == "image_token" and recorded[EXIT_KEY] == "end_token"
    assert {"latent_top1", "accuracy_random_tokens", "latent_span", "span_is_region"} <= set(saved["sft_lvr"])
    assert saved["sft_lvr"]["final_loss"]["input_cosine"] < 0.99
    assert train.LVRTrainConfig().latent_inputs == experiment.LVRExperimentConfig().latent_inputs == "teacher"
    with pytest.raises(SystemExit):
        experiment.main(["--latent-inputs", "mine"])


def test_a_stage_named_in_stages_is_rerun_and_only_a_stopped_grpo_run_resumes(path, tmp_path, monkeypatch):
    """`--stages grpo` with another grpo_lr, or `--stages sft grpo` with other sft_steps, on an earlier
    OUT was refused ("grpo was made with other settings ... rerun it (--stages)"); with the same
    settings a finished GRPO run was resumed (nothing trained), even from an SFT model just retrained."""
    import dataclasses
    import shutil

    from reasonrl.rl import train as rl_train
    from reasonrl.vision.lvr import experiment

    class Trained(Exception):
        pass

    def training(recipe, control, console=True, resume=None):
        raise Trained(control.overwrite)

    monkeypatch.setattr(rl_train, "run_training", training)
    out = tmp_path / "lvr"
    cfg = experiment.LVRExperimentConfig(out=str(out), base=str(path), train_problems=4, eval_problems=1, sft_steps=2,
                                         batch=2, arms=("lvr",), grpo_steps=2, sweep=(4,))

    def overwrites(step: int, **change) -> bool:
        """Whether GRPO starts over on an OUT whose SFT is done and whose GRPO stopped at `step` of 2."""
        shutil.rmtree(out, ignore_errors=True)
        checkpoint = out / "grpo" / "checkpoints" / f"step_{step:06d}"
        checkpoint.mkdir(parents=True)
        (checkpoint / "trainer_state.pt").write_bytes(b"")
        stages = {"sft_lvr": experiment.stage_settings(cfg, "sft"), "grpo": experiment.stage_settings(cfg, "grpo")}
        (out / "results.json").write_text(json.dumps({"sft_lvr": {"accuracy": 0.5}, "stages": stages}))
        with pytest.raises(Trained) as ran:
            experiment.run_experiment(dataclasses.replace(cfg, **change), log=lambda text: None)
        return ran.value.args[0]

    assert overwrites(2, stages=("grpo",), grpo_lr=1e-4)  # what was asked: GRPO again with the new lr
    assert overwrites(2, stages=("grpo",))  # a finished run is trained again, not "resumed" to nothing
    assert not overwrites(1, stages=("grpo",))  # a stopped one made with these settings goes on
    assert overwrites(1, stages=("grpo",), grpo_lr=1e-4)
    assert overwrites(1, stages=("sft", "grpo"))  # from an SFT model retrained just now
    assert overwrites(1, stages=("sft", "grpo"), sft_steps=3)
    with pytest.raises(ValueError, match="sft_steps"):  # a stage not named is kept, and checked
        overwrites(1, stages=("grpo",), sft_steps=3)


@pytest.mark.slow
def test_a_stopped_grpo_stage_resumes_and_kept_stages_of_other_settings_are_refused(path, tmp_path, ctrl_c_in_train_step):
    """Ctrl-C during GRPO ended in a traceback and the rerun deleted the checkpoint and started over
    (RunControl(overwrite=True)); figures kept from other settings were reported under the new ones."""
    import dataclasses
    import signal

    from reasonrl.rl.checkpoint import latest_checkpoint
    from reasonrl.vision.lvr.experiment import LVRExperimentConfig, run_experiment

    cfg = LVRExperimentConfig(out=str(tmp_path / "lvr"), base=str(path), train_problems=8, eval_problems=2, sft_steps=2,
                              batch=2, arms=("lvr",), grpo_steps=2, sweep=(4,))
    with pytest.raises(SystemExit) as stopped:
        run_experiment(cfg, log=lambda text: None)
    assert stopped.value.code == 128 + signal.SIGINT
    assert latest_checkpoint(tmp_path / "lvr" / "grpo").name == "step_000001"
    ctrl_c_in_train_step()  # the real step again
    results = run_experiment(dataclasses.replace(cfg, stages=("grpo",)), log=lambda text: None)
    logged = [json.loads(line)["step"] for line in (tmp_path / "lvr" / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert logged == [0, 1, 2] and "accuracy" in results["grpo"] and "accuracy" in results["sft_lvr"]
    for change, key in (({"stages": ("grpo",), "sft_steps": 3}, "sft_steps"), ({"stages": ("sft",), "grpo_lr": 1e-4}, "grpo_lr")):
        with pytest.raises(ValueError, match=key):
            run_experiment(dataclasses.replace(cfg, **change), log=lambda text: None)


def test_autocast_reaches_the_sft_forward_and_the_grpo_recipe(setup, monkeypatch):
    """LVR's trainings had no compute-dtype option: a real Qwen2.5-VL trained in float32 on a GPU."""
    from contextlib import nullcontext

    from reasonrl.vision.lvr import experiment, train

    model, tok, latent, problems, examples = setup
    seen = []
    monkeypatch.setattr(train, "autocast", lambda device, dtype: seen.append((device.type, dtype)) or nullcontext())
    train_sft_lvr(load_model_copy(model), examples[:4], LVRTrainConfig(steps=2, batch=2, autocast="bfloat16"))
    assert seen == [("cpu", "bfloat16")] * 2
    cfg = experiment.LVRExperimentConfig(autocast="bfloat16")
    assert experiment.grpo_recipe(cfg, "x")["model"]["autocast"] == "bfloat16"
    assert experiment.stage_settings(cfg, "sft")["autocast"] == "bfloat16"  # other figures: not reused


def test_stages_recorded_before_the_scene_options_are_kept_with_the_same_scenes(tmp_path):
    """results.json written before --image-size, --min-objects, --max-objects and --autocast existed
    records none of them: its stages were refused under the very settings they were made with, and
    the GRPO recipe's environment spec changed under a stopped run."""
    from reasonrl.vision.lvr.experiment import LVRExperimentConfig, _check_kept, env_spec, stage_settings

    cfg = LVRExperimentConfig(out=str(tmp_path), stages=("grpo",))
    new = ("autocast", "image_size", "min_objects", "max_objects")
    old = {k: v for k, v in stage_settings(cfg, "sft").items() if k not in new}
    _check_kept(cfg, tmp_path, {"stages": {"sft_lvr": old, "sft_plain": old}}, (), True, lambda text: None)
    other = LVRExperimentConfig(out=str(tmp_path), stages=("grpo",), max_objects=8)
    with pytest.raises(ValueError, match="max_objects"):
        _check_kept(other, tmp_path, {"stages": {"sft_lvr": old}}, (), True, lambda text: None)
    assert env_spec(cfg) == "lvr:?max_objects=4"  # the spec runs made before recorded
    spec = env_spec(LVRExperimentConfig(image_size=168, min_objects=2))
    assert spec == "lvr:?max_objects=4&image_size=168&min_objects=2"


def test_reasonrl_data_lvr_takes_every_scene_option_of_the_experiment(monkeypatch, tmp_path):
    """`reasonrl data lvr` had no --min-objects: it could not write the data of such an experiment."""
    from reasonrl.cli import main
    from reasonrl.vision.lvr import export

    made = []

    def environment(scenes):  # stop once the scenes are known
        made.append(scenes)
        raise LookupError("stop")

    monkeypatch.setattr(export, "LVRShapesEnvironment", environment)
    with pytest.raises(LookupError):
        main(["data", "lvr", "--out", str(tmp_path), "--image-size", "112", "--min-objects", "3", "--max-objects", "5"])
    assert made == [LVRShapesConfig(image_size=112, min_objects=3, max_objects=5)]


def test_a_pointer_loss_with_state_feedback_warns(setup):
    """The checkpoint would tell the engine to feed the pointer-trained model its states, on which it collapses."""
    import warnings

    model, tok, latent, problems, examples = setup
    with pytest.warns(UserWarning, match="feedback 'image_token'"):
        train_sft_lvr(load_model_copy(model), examples, LVRTrainConfig(steps=1, batch=2, pointer_weight=1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trained = load_model_copy(model)
        train_sft_lvr(trained, examples, LVRTrainConfig(steps=1, batch=2, pointer_weight=1.0, feedback="image_token"))
    assert trained.vlm_config.raw[FEEDBACK_KEY] == "image_token"
