"""ImageDoctor judge training on the shapes world, with tiny heads on the embedded VLM:
task tokens added as atomic tokens that survive decoding, `reasonrl data doctor` output usable by
`reasonrl sft`, SFT lowering both losses, the ablation's maps ignoring the text, the GRPO
environment's reward parts, and the correlation/IoU metrics."""

import json
import shutil

import numpy as np
import pytest
import torch

from reasonrl.models.tokenizer import Tokenizer
from reasonrl.reward.imagedoctor.build import (TASK_TOKENS, NoTaskTokenDoctor, cold_start_items, doctor_from_vlm,
                                               judge_items)
from reasonrl.reward.imagedoctor.decoder import HeatmapConfig
from reasonrl.reward.imagedoctor.env import JudgeEnvironment
from reasonrl.reward.imagedoctor.evaluate import iou, map_metrics, pearson, ranks, spearman
from reasonrl.reward.imagedoctor.export import DoctorDataConfig, judge_examples
from reasonrl.reward.imagedoctor.judgement import parse_judgement
from reasonrl.reward.imagedoctor.sft import JudgeSFTConfig, batch_tensors, judge_loss, train_judge_sft

VLM = "reasonrl/demo/vlm"
HEAD = HeatmapConfig(dim=32, heads=2, mlp_dim=48, conv_channels=(24, 16), up_channels=(16, 8), mask_in_chans=8)


def small(n=4, split="train"):
    return judge_examples(DoctorDataConfig(out="unused", n=n, image_size=112, split=split))


@pytest.fixture(scope="module")
def doctor():
    return doctor_from_vlm(VLM, HEAD)


def test_task_tokens_are_added_atomic_and_survive_decoding(doctor):
    judge, tok = doctor
    base = Tokenizer.from_dir(VLM)
    assert judge.backbone.config.vocab_size == base.vocab_size + 2
    text = "Misalignment Locations: <|misalignment|>; Artifact Locations: <|artifact|>;"
    ids = tok.encode(text, add_special_tokens=False)
    assert judge.cfg.misalignment_token_id in ids and judge.cfg.artifact_token_id in ids
    assert tok.decode(ids) == text  # the rollout decodes with special tokens skipped: these must stay
    old = load_embedding(VLM)
    assert torch.equal(judge.backbone.embed_tokens.weight[:old.shape[0]], old)  # old rows untouched


def load_embedding(path):
    from reasonrl.models.loader import load_model

    return load_model(path).embed_tokens.weight.detach()


def test_data_command_writes_sft_jsonl_with_maps(tmp_path):
    from reasonrl.cli import main
    from reasonrl.rl.sft import load_sft_data

    assert main(["data", "doctor", "--out", str(tmp_path), "--n", "3", "--image-size", "112"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "judge.jsonl").read_text().splitlines()]
    examples = small(3)
    for row, ex in zip(rows, examples, strict=True):
        maps = np.load(tmp_path / row["maps"])
        assert np.array_equal(maps["misalignment"], ex.misalignment) and np.array_equal(maps["artifact"], ex.artifact)
        assert row["response"] == ex.judgement() and row["scores"] == ex.scores
    tok = Tokenizer.from_dir(VLM)
    from reasonrl.models.chat import ChatEncoder
    from reasonrl.models.loader import load_model
    from reasonrl.models.qwen2_5_vl.prompt import message_images

    samples = load_sft_data(tmp_path / "judge.jsonl", ChatEncoder(tok, load_model(VLM)))
    assert len(samples) == 3 and all(message_images(s.prompt) for s in samples)  # images kept as paths (rl/sft.py)
    assert main(["data", "doctor", "--out", str(tmp_path), "--split", "test"]) == 2  # bad input: exit 2


def test_eval_split_is_disjoint_from_train():
    train = {ex.caption for ex in small(30)}
    held = {ex.caption for ex in small(30, "eval")}
    assert len(train & held) < 5  # captions of 1-object scenes can repeat by chance; streams differ


def test_sft_lowers_cross_entropy_and_heatmap_mse():
    judge, tok = doctor_from_vlm(VLM, HEAD, seed=1)
    items = judge_items(small(4), tok, judge.backbone)
    before = judge_loss(judge, items, tok.pad_token_id)[1]
    history = train_judge_sft(judge, items, JudgeSFTConfig(epochs=8, lr=2e-3, samples_per_step=4, microbatch=2), tok.pad_token_id,
                              log=None)
    after = judge_loss(judge, items, tok.pad_token_id)[1]
    assert len(history) == 8
    assert after["ce"] < 0.6 * before["ce"] and after["heatmap_mse"] < 0.5 * before["heatmap_mse"]


def test_the_cold_start_trains_the_scores_text_alone(doctor):
    """ImageDoctor's first stage: the target is the four scores (nothing else), and the loss is the
    cross-entropy alone: the heatmap head gets no gradient and no term."""
    judge, tok = doctor
    examples = small(2)
    full = judge_items(examples, tok, judge.backbone)
    items = cold_start_items(full, tok)
    assert all(a.prompt is b.prompt for a, b in zip(items, full))  # the same prompts, another target
    for it, ex in zip(items, examples):
        text = tok.decode(it.response_ids)
        assert text.startswith("<answer>Semantic Alignment score: ") and "<think>" not in text
        assert parse_judgement(text).scores == {k: round(v, 2) for k, v in ex.scores.items()}
    judge.zero_grad(set_to_none=True)
    loss, parts = judge_loss(judge, items, tok.pad_token_id, heatmap=False)
    loss.backward()
    assert parts["heatmap_mse"] == 0.0 and loss.item() == pytest.approx(parts["ce"])
    assert all(p.grad is None for p in judge.heatmap.parameters())
    assert judge.backbone.layers[0].self_attn.qkv_proj.weight.grad is not None
    with_head = judge_loss(judge, items, tok.pad_token_id)[1]
    assert with_head["ce"] == pytest.approx(parts["ce"], rel=1e-5) and with_head["heatmap_mse"] > 0
    judge.zero_grad(set_to_none=True)


def test_a_cold_start_step_leaves_the_heatmap_head_as_it_was():
    judge, tok = doctor_from_vlm(VLM, HEAD, seed=1)
    items = cold_start_items(judge_items(small(2), tok, judge.backbone), tok)
    head = {k: v.clone() for k, v in judge.head_state().items()}
    lm = judge.backbone.layers[0].mlp.down_proj.weight.detach().clone()
    history = train_judge_sft(judge, items, JudgeSFTConfig(epochs=1, samples_per_step=2, microbatch=2, heatmap=False),
                              tok.pad_token_id, log=None)
    assert all(torch.equal(v, judge.head_state()[k]) for k, v in head.items())
    assert not torch.equal(lm, judge.backbone.layers[0].mlp.down_proj.weight)
    assert "heatmap_mse" not in history[0]  # not a loss of 0: none


@pytest.mark.parametrize("train_vision", [False, True])
def test_the_vision_tower_trains_only_when_asked(train_vision):
    judge, tok = doctor_from_vlm(VLM, HEAD, seed=1)
    items = judge_items(small(2), tok, judge.backbone)
    before = [p.detach().clone() for p in judge.backbone.visual.parameters()]
    train_judge_sft(judge, items, JudgeSFTConfig(epochs=1, samples_per_step=2, microbatch=2, train_vision=train_vision),
                    tok.pad_token_id, log=None)
    moved = [not torch.equal(a, b) for a, b in zip(before, judge.backbone.visual.parameters())]
    assert (any(moved), all(moved)) == ((True, True) if train_vision else (False, False))


def test_labels_cover_exactly_the_response(doctor):
    judge, tok = doctor
    items = judge_items(small(2), tok, judge.backbone)
    ids, labels = batch_tensors(items, tok.pad_token_id)
    for i, it in enumerate(items):
        n = len(it.prompt.input_ids)
        assert labels[i, n - 1:n - 1 + len(it.response_ids)].tolist() == it.response_ids
        assert (labels[i, :n - 1] == -100).all() and (labels[i, n - 1 + len(it.response_ids):] == -100).all()


def test_ablation_maps_ignore_the_text_and_task_token_maps_do_not():
    plain, tok = doctor_from_vlm(VLM, HEAD, task_tokens=False)
    full, tok2 = doctor_from_vlm(VLM, HEAD)
    assert isinstance(plain, NoTaskTokenDoctor) and plain.backbone.config.vocab_size == tok.vocab_size
    item = judge_items(small(1), tok, plain.backbone, task_tokens=False)[0]
    item2 = judge_items(small(1), tok2, full.backbone)[0]
    for model, it, t in ((plain, item, tok), (full, item2, tok2)):
        texts = [f"<answer>Misalignment Locations: {TASK_TOKENS[0]}; Artifact Locations: {TASK_TOKENS[1]};</answer>",
                 f"<answer>nothing here at all; {TASK_TOKENS[0]} then {TASK_TOKENS[1]}</answer>"]
        maps = []
        for text in texts:
            ids = torch.tensor([list(it.prompt.input_ids) + t.encode(text, add_special_tokens=False)])
            with torch.no_grad():
                maps.append(model(ids, [it.prompt])[1].maps[0])
        same = torch.allclose(maps[0], maps[1])
        assert same if model is plain else not same


def test_environment_rewards_the_true_judgement_over_garbage(doctor):
    judge, tok = doctor
    examples = [ex for ex in small(12) if ex.boxes][:2]
    items = judge_items(examples, tok, judge.backbone)
    env = JudgeEnvironment(judge, tok, items, items)
    for prompt, ex in zip(env.prompts(split="eval"), examples):
        truth = env.parts(prompt.answer, ex.judgement())
        garbage = env.parts(prompt.answer, "<answer>Aesthetic score: 7</answer>")
        assert truth["score"] == pytest.approx(1.0, abs=0.02) and garbage["score"] == 0.0
        assert truth["grounding"] > 0.3 and garbage["grounding"] == 0.0  # boxes missing for a flawed image
        assert env.reward(prompt, ex.judgement()) > env.reward(prompt, "garbage")
        assert 0.0 <= truth["heatmap"] <= 1.0 and truth["format"] == 1.0
        assert garbage["heatmap"] == 0.0 and garbage["format"] == 0.0  # no task token: no map to reward
        flawless = env.parts(prompt.answer, "no task tokens")  # even where an all-zero map would match
        assert flawless["heatmap"] == 0.0
    assert len(env.prompts(n=1, split="train")) == 1


@pytest.mark.parametrize("garbage", ["", "asdkjh", "<think></think>", "\x00" * 8])
def test_garbage_earns_nothing_on_a_flawless_image(doctor, garbage):
    """No box on a flawless image earned the full grounding reward even with no judgement at all."""
    judge, tok = doctor
    examples = [ex for ex in small(12) if not ex.boxes][:1]
    item = judge_items(examples, tok, judge.backbone)[0]
    env = JudgeEnvironment(judge, tok, [item], [item])
    assert env.parts(item, garbage) == {"score": 0.0, "heatmap": 0.0, "grounding": 0.0, "format": 0.0}
    assert env.parts(item, examples[0].judgement())["grounding"] == 1.0  # the true judgement: no box, no flaw


def test_correlations_and_iou():
    x = np.array([0.1, 0.4, 0.2, 0.9])
    assert pearson(x, 3 * x + 1) == pytest.approx(1.0) and pearson(x, -x) == pytest.approx(-1.0)
    assert spearman(x, np.exp(5 * x)) == pytest.approx(1.0)  # monotone: rank correlation 1, Pearson below
    assert pearson(x, np.exp(5 * x)) < 0.99
    assert ranks([3, 1, 3, 2]).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert pearson([1, 1, 1], [1, 2, 3]) == 0.0  # a constant prediction
    truth = np.zeros((4, 4))
    truth[:2] = 1
    pred = np.zeros((4, 4))
    pred[:1] = 0.9
    assert iou(pred, truth) == pytest.approx(0.5)


def test_map_metrics_skip_empty_truths():
    class Item:
        def __init__(self, maps):
            self.maps = torch.from_numpy(maps)

    mask = np.zeros((2, 8, 8), dtype=np.float32)
    mask[0, 2:5, 2:5] = 1  # misalignment only; the artifact map is empty
    out = map_metrics([mask.copy()], [Item(mask)])
    assert out["cc/misalignment"] == pytest.approx(1.0) and out["iou/misalignment"] == pytest.approx(1.0)
    assert out["cc/artifact"] == 0.0  # no image with an artifact: nothing measured


def test_balanced_heatmap_loss_weighs_the_flaw_as_much_as_the_rest():
    from reasonrl.reward.imagedoctor.model import Heatmaps
    from reasonrl.reward.imagedoctor.sft import balanced_heatmap_loss

    truth = torch.zeros(2, 10, 10)
    truth[0, :1, :1] = 1  # one flawed pixel of 100 in the first map, the second map empty
    zeros = Heatmaps([torch.zeros(2, 10, 10)], torch.ones(1, 2, dtype=torch.bool))
    assert float(balanced_heatmap_loss(zeros, [truth], 1.0)) == pytest.approx(0.5)  # plain MSE would be 0.01
    exact = Heatmaps([truth.clone()], torch.ones(1, 2, dtype=torch.bool))
    assert float(balanced_heatmap_loss(exact, [truth], 2.0)) == 0.0
    ones = Heatmaps([torch.ones(2, 10, 10)], torch.ones(1, 2, dtype=torch.bool))
    assert float(balanced_heatmap_loss(ones, [truth], 1.0)) == pytest.approx(0.5 + 1.0)  # empty map: plain mean


def test_head_ablation_trains_two_heads_on_a_frozen_judge():
    from reasonrl.reward.imagedoctor.ablation import fresh_heads, train_heads

    judge, tok = doctor_from_vlm(VLM, HEAD, seed=2)
    items = judge_items(small(4), tok, judge.backbone)
    heads = fresh_heads(judge, seed=0)
    assert isinstance(heads["no_task_tokens"], NoTaskTokenDoctor) and not isinstance(heads["task_tokens"], NoTaskTokenDoctor)
    backbone = [p.clone() for p in judge.backbone.parameters()]
    before = {k: [p.clone() for n, p in h.named_parameters() if n.startswith("heatmap.")] for k, h in heads.items()}
    train_heads(heads, items, steps=2, batch=2, lr=1e-3, pad=tok.pad_token_id)
    assert all(torch.equal(a, b) for a, b in zip(backbone, judge.backbone.parameters()))  # the judge stays frozen
    for k, h in heads.items():
        after = [p for n, p in h.named_parameters() if n.startswith("heatmap.")]
        assert any(not torch.equal(a, b) for a, b in zip(before[k], after))


def test_images_the_processor_resizes_train_and_score_at_their_own_size(doctor):
    """A side that is not a multiple of the patch (100 -> 112): the maps came out at 112 and every
    loss and reward against the 100 x 100 true masks raised a shape error."""
    judge, tok = doctor
    examples = judge_examples(DoctorDataConfig(out="unused", n=2, image_size=100))
    items = judge_items(examples, tok, judge.backbone)
    assert tuple(items[0].maps.shape) == (2, 100, 100)
    loss, parts = judge_loss(judge, items, tok.pad_token_id)
    assert np.isfinite(parts["heatmap_mse"])
    env = JudgeEnvironment(judge, tok, items, items)
    assert set(env.parts(items[0], examples[0].judgement())) == {"score", "heatmap", "grounding", "format"}


TINY_BENCH = dict(train_images=4, eval_images=2, cold_start_epochs=0, sft_epochs=1, ablation_steps=1, grpo_steps=2, prompts_per_step=2,
                  samples_per_prompt=2, stages=("sft", "grpo"))


@pytest.mark.slow  # SFT and two GRPO steps of the tiny judge (judgements up to 512 tokens), twice: ~65 s
def test_bench_grpo_stops_cleanly_resumes_and_stages_made_with_other_settings_are_refused(tmp_path, ctrl_c_in_train_step):
    """Ctrl-C during GRPO lost every step (no stop hook, a checkpoint every 1000 steps) and a rerun
    started over; a rerun under other settings reused the stages and recorded settings that never
    produced them."""
    import dataclasses
    import signal

    from reasonrl.reward.imagedoctor.experiment import JudgeBenchConfig, bench_judge
    from reasonrl.rl.checkpoint import latest_checkpoint

    cfg = JudgeBenchConfig(out=str(tmp_path), **TINY_BENCH)
    with pytest.raises(SystemExit) as stopped:
        bench_judge(cfg, log=lambda *_: None)
    assert stopped.value.code == 128 + signal.SIGINT
    assert latest_checkpoint(tmp_path / "grpo" / "run").name == "step_000001"
    ctrl_c_in_train_step()  # the real step again
    result = bench_judge(cfg, log=lambda *_: None)
    logged = [json.loads(line)["step"] for line in (tmp_path / "grpo" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert logged == [0, 1, 2] and len(result["grpo"]["rewards"]) == 2  # resumed at step 2, not started over
    rows = [json.loads(line) for line in (tmp_path / "grpo" / "run" / "metrics.jsonl").read_text().splitlines()]
    seconds = sum(r["step_seconds"] for r in rows if "step_seconds" in r)
    assert result["grpo"]["train_seconds"] == pytest.approx(seconds)  # both steps, not only the resumed process's
    assert bench_judge(cfg, log=lambda *_: None)["sft"] == result["sft"]  # the same settings: reused
    for change, key in (({"sft_lr": 1e-3}, "sft_lr"), ({"grpo_steps": 3, "stages": ("grpo",)}, "grpo_steps")):
        with pytest.raises(ValueError, match=key):
            bench_judge(dataclasses.replace(cfg, **change), log=lambda *_: None)


def test_data_doctor_refuses_an_earlier_runs_output_unless_overwrite(tmp_path, capsys):
    """A smaller second export into the same --out overwrote judge.jsonl and left the first's extra images."""
    from reasonrl.cli import main

    base = ["data", "doctor", "--out", str(tmp_path), "--image-size", "64"]
    (tmp_path / "notes.txt").write_text("mine")
    assert main([*base, "--n", "3"]) == 0
    assert main([*base, "--n", "2", "--split", "eval"]) == 2 and "--overwrite" in capsys.readouterr().err
    assert len((tmp_path / "judge.jsonl").read_text().splitlines()) == 3
    assert main([*base, "--n", "2", "--split", "eval", "--overwrite"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "judge.jsonl").read_text().splitlines()]
    assert [r["id"][:4] for r in rows] == ["eval"] * 2
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["doctor_000000.png", "doctor_000001.png"]
    assert len(list((tmp_path / "maps").iterdir())) == 2 and (tmp_path / "notes.txt").read_text() == "mine"


def test_the_generation_budget_holds_every_target_judgement(doctor, tmp_path):
    """max_tokens was 384 and the GRPO engine's context 640 while the data's targets run past 384
    tokens: a judgement cut before </answer> parses to no scores, so even a perfect judge measured
    PLCC 0.52-0.85 and GRPO gave the most flawed images' complete judgements 0."""
    import dataclasses

    from reasonrl.reward.imagedoctor.experiment import JudgeBenchConfig, bench_judge, grpo_recipe

    judge, tok = doctor
    cfg = JudgeBenchConfig(out=str(tmp_path / "bench"), train_images=40, eval_images=20)
    examples = judge_examples(DoctorDataConfig(out="unused", n=40)) + judge_examples(
        DoctorDataConfig(out="unused", n=20, split="eval"))
    items = judge_items(examples, tok, judge.backbone)
    longest = max(len(it.response_ids) for it in items)
    assert 384 < longest <= cfg.max_tokens
    prompt = max(len(it.prompt.input_ids) for it in items)
    recipe = grpo_recipe(cfg, tmp_path / "model", tmp_path / "run", prompt)
    assert recipe["rollout"]["max_tokens"] == cfg.max_tokens
    assert recipe["engine"]["max_model_len"] - prompt >= cfg.max_tokens  # room after the longest prompt
    with pytest.raises(ValueError, match=f"--max-tokens 300 .*{longest} tokens"):
        bench_judge(dataclasses.replace(cfg, max_tokens=300), log=lambda *_: None)
    assert not (tmp_path / "bench").exists()  # refused before anything was written


@pytest.mark.slow  # two tiny SFT stages and their held-out judgements: ~30 s
def test_the_cold_start_is_kept_when_the_full_sft_stops_and_old_stages_ran_without_one(tmp_path, monkeypatch):
    """The cold start is measured and saved on its own, so a stop in the second SFT stage does not
    train it again; an SFT stage recorded before the option existed ran without a cold start."""
    import dataclasses

    from reasonrl.reward.imagedoctor import experiment
    from reasonrl.reward.imagedoctor.experiment import SMALL_HEAD, JudgeBenchConfig, bench_judge

    cfg = JudgeBenchConfig(out=str(tmp_path / "out"), train_images=2, eval_images=1, cold_start_epochs=1,
                           sft_epochs=1, stages=("sft",))
    calls, starts, real = [], [], experiment.train_judge_sft

    def weights(doctor):
        return torch.cat([p.detach().flatten() for p in doctor.backbone.parameters()]).clone()

    def stop_in_the_second_stage(doctor, items, sft, pad, log=None):
        calls.append(sft.heatmap)
        if sft.heatmap:
            starts.append(weights(doctor))
            if len(calls) == 2:
                raise KeyboardInterrupt
        return real(doctor, items, sft, pad, log)

    monkeypatch.setattr(experiment, "train_judge_sft", stop_in_the_second_stage)
    with pytest.raises(KeyboardInterrupt):
        bench_judge(cfg, log=lambda *_: None)
    first = json.loads((tmp_path / "out" / "sft" / "cold_start" / "metrics.json").read_text())
    assert {"plcc/alignment", "parsed/alignment"} <= set(first)
    assert "cc/misalignment" not in first and "well_formed" not in first  # scores only: no task token, no maps
    with pytest.raises(ValueError, match="sft_lr"):  # a cold start made with other settings is not reused
        bench_judge(dataclasses.replace(cfg, sft_lr=1e-4), log=lambda *_: None)
    result = bench_judge(dataclasses.replace(cfg, sft_epochs=2), log=lambda *_: None)  # the second stage's own setting
    assert calls == [False, True, True]  # the rerun trained the second stage only,
    assert torch.equal(starts[1], starts[0])  # from the cold start's weights,
    assert not torch.equal(starts[0], weights(doctor_from_vlm(VLM, SMALL_HEAD)[0]))  # not the VLM's
    assert result["sft"]["cold_start"] == first and "cc/misalignment" in result["sft"]

    old = tmp_path / "old"  # a finished SFT stage from before the cold start existed
    shutil.copytree(tmp_path / "out", old)
    settings = json.loads((old / "sft" / "stage.json").read_text())
    del settings["cold_start_epochs"]
    (old / "sft" / "stage.json").write_text(json.dumps(settings))
    with pytest.raises(ValueError, match="cold_start_epochs"):
        bench_judge(dataclasses.replace(cfg, out=str(old)), log=lambda *_: None)
    old_run = dataclasses.replace(cfg, out=str(old), cold_start_epochs=0, sft_epochs=2)
    assert bench_judge(old_run, log=lambda *_: None)["sft"] == result["sft"]


def test_a_negative_cold_start_is_refused_before_anything_is_written(tmp_path):
    from reasonrl.reward.imagedoctor.experiment import JudgeBenchConfig, bench_judge

    cfg = JudgeBenchConfig(out=str(tmp_path / "out"), train_images=2, eval_images=2, cold_start_epochs=-1)
    with pytest.raises(ValueError, match="--cold-start-epochs must be >= 0"):
        bench_judge(cfg, log=lambda *_: None)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("stage", ["ablation", "grpo"])
def test_a_stage_from_the_sft_judge_is_refused_until_sft_has_finished(tmp_path, stage):
    """The ablation (or GRPO) run beside SFT on a fresh --out wrote its stage.json, then failed on a
    missing (or half-written) OUT/sft/model with a bare FileNotFoundError."""
    from reasonrl.reward.imagedoctor.experiment import JudgeBenchConfig, bench_judge

    cfg = JudgeBenchConfig(out=str(tmp_path / "out"), train_images=2, eval_images=2, stages=(stage,))
    with pytest.raises(ValueError, match="run --stages sft first"):
        bench_judge(cfg, log=lambda *_: None)
    assert not (tmp_path / "out").exists()
    (tmp_path / "out" / "sft" / "model").mkdir(parents=True)  # SFT still saving: no metrics.json yet
    with pytest.raises(ValueError, match="no metrics.json"):
        bench_judge(cfg, log=lambda *_: None)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["sft"]


@pytest.mark.parametrize("flag", ["--misaligned-max", "--artifacts-max"])
def test_data_doctor_names_a_negative_count_before_writing(tmp_path, capsys, flag):
    """They failed with "high <= 0", naming no option, after making the output directories (so the
    corrected rerun was refused without --overwrite)."""
    from reasonrl.cli import main

    out = tmp_path / "data"
    assert main(["data", "doctor", "--out", str(out), "--n", "2", "--image-size", "64", flag, "-1"]) == 2
    assert f"{flag} must be >= 0" in capsys.readouterr().err and not out.exists()


def test_autocast_reaches_the_judge_sft_forward_and_the_grpo_recipe(monkeypatch, tmp_path):
    """The judge's trainings had no compute-dtype option: a real Qwen2.5-VL judge trained in float32 on a GPU."""
    from contextlib import nullcontext

    from reasonrl.reward.imagedoctor import sft
    from reasonrl.reward.imagedoctor.experiment import JudgeBenchConfig, grpo_recipe, stage_settings

    judge, tok = doctor_from_vlm(VLM, HEAD, seed=1)
    items = judge_items(small(2), tok, judge.backbone)
    seen = []
    monkeypatch.setattr(sft, "autocast", lambda device, dtype: seen.append((device.type, dtype)) or nullcontext())
    train_judge_sft(judge, items, JudgeSFTConfig(epochs=2, samples_per_step=2, microbatch=1, autocast="bfloat16"),
                    tok.pad_token_id, log=None)
    assert seen == [("cpu", "bfloat16")] * 4  # every micro-batch's forward
    cfg = JudgeBenchConfig(autocast="bfloat16")
    assert grpo_recipe(cfg, tmp_path / "m", tmp_path / "r", 100)["model"]["autocast"] == "bfloat16"
    assert stage_settings(cfg, "sft")["autocast"] == "bfloat16"


def test_a_judge_of_another_kind_of_image_is_not_reused(tmp_path):
    """A judge trained on a generator's images (--generator) and one trained on renders are different
    judges: a finished stage of one is refused for the other, and stages recorded before the option
    existed were trained on renders."""
    from reasonrl.reward.imagedoctor.experiment import JudgeBenchConfig, _check_stage, cold_start_settings, stage_settings

    renders = JudgeBenchConfig(out=str(tmp_path))
    generated = JudgeBenchConfig(out=str(tmp_path), generator="reasonrl/vision/gen/shipped/smarli")
    for name, settings in (("sft", lambda cfg: stage_settings(cfg, "sft")), ("cold_start", cold_start_settings)):
        stage = tmp_path / name
        stage.mkdir()
        (stage / "metrics.json").write_text("{}")
        recorded = settings(renders)
        del recorded["generator"]  # as recorded before the option
        (stage / "stage.json").write_text(json.dumps(recorded))
        _check_stage(stage, settings(renders))
        with pytest.raises(ValueError, match="generator"):
            _check_stage(stage, settings(generated))


def test_data_doctor_writes_a_generators_kind_of_image_and_refuses_one_that_does_not_load(tmp_path, capsys):
    from reasonrl.cli import main
    from reasonrl.vision.world.export import read_png

    bad = tmp_path / "bad"
    assert main(["data", "doctor", "--out", str(bad), "--n", "2", "--generator", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err and not bad.exists()  # nothing written
    out = tmp_path / "good"
    assert main(["data", "doctor", "--out", str(out), "--n", "2", "--generator", "reasonrl/vision/gen/shipped/smarli"]) == 0
    image = read_png(out / "images" / "doctor_000000.png")
    assert image.shape == (224, 224, 3)
    blocks = image.reshape(32, 7, 32, 7, 3)
    assert (blocks == blocks[:, :1, :, :1]).all()  # the generator's 32-px image, scaled up
