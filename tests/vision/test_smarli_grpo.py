"""Layout GRPO on a tiny SMARLI model: the registry's loss and advantages, replay, weights, run machinery."""

import json

import numpy as np
import pytest
import torch

from reasonrl.rl.advantages import AdvantageConfig
from reasonrl.rl.config import OptimSection
from reasonrl.rl.losses import LossConfig
from reasonrl.vision.gen.io import load_model_dir
from reasonrl.vision.gen.run import RunSettings, run_job
from reasonrl.vision.smarli.grpo import LayoutGRPOConfig, LayoutGRPOJob
from reasonrl.vision.smarli.train import SmarliJob, SmarliTrainConfig


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    path = tmp_path_factory.mktemp("smarli")
    job = SmarliJob(SmarliTrainConfig(width=32, num_heads=2, num_layers=1, steps=2, layouts_per_step=4,
                                      eval_layouts=4, codebook_scenes=100))
    job.train_step()
    job.save(path)
    return path


def grpo(policy, **kw):
    cfg = LayoutGRPOConfig(**{**dict(policy=str(policy), steps=2, layouts_per_step=2, samples_per_layout=4,
                                     sample_steps=4, eval_layouts=4), **kw})
    return LayoutGRPOJob(cfg, LossConfig(), AdvantageConfig(), OptimSection(lr=1e-3))


def test_a_step_uses_group_advantages_and_in_box_weights(policy, monkeypatch):
    job = grpo(policy)
    seen = {}
    loss_fn = job.loss_fn

    def spy(logp, old_logp, behaviour, adv, mask, cfg, *, ref_logp=None):
        seen.update(logp=logp.detach(), old=old_logp, adv=adv)
        return loss_fn(logp, old_logp, behaviour, adv, mask, cfg, ref_logp=ref_logp)

    job.loss_fn = spy
    before = [p.detach().clone() for p in job.model.parameters()]
    metrics = job.train_step()
    assert torch.allclose(seen["logp"], seen["old"], atol=1e-5)  # replay reproduces the rollout's log-probs
    adv = seen["adv"]  # (8, 64): per sample a group advantage, x1.2 on covered cells
    ratios = {round(float(r), 4) for r in (adv.abs() / adv.abs().amin(1, keepdim=True).clamp(min=1e-9)).flatten() if r != 0}
    assert ratios <= {1.0, 1.2} and (adv.abs().sum(1) > 0).any()
    assert any(not torch.equal(a, b) for a, b in zip(before, job.model.parameters()))
    for key in ("reward_mean", "miou", "attribute", "policy_loss", "grad_norm", "clip_fraction"):
        assert key in metrics and np.isfinite(metrics[key])


def test_group_advantages_sum_to_zero(policy):
    job = grpo(policy)
    rewards = torch.tensor([0.1, 0.5, 0.3, 0.9, 0.2, 0.2, 0.2, 0.2])
    adv = job.advantage_fn(rewards, torch.arange(8) // 4, job.adv_cfg)
    assert abs(float(adv[:4].sum())) < 1e-5 and torch.equal(adv[4:], torch.zeros(4))


def test_quality_reward_needs_a_classifier(policy):
    with pytest.raises(ValueError, match="realism"):
        LayoutGRPOConfig(policy=str(policy), reward="quality")


def test_grpo_run_logs_and_saves(policy, tmp_path):
    out = tmp_path / "grpo"
    assert run_job(grpo(policy), RunSettings(out=str(out)), {"grpo": "tiny"}, console=False) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert "eval_reward_mean" in rows[0] and "eval_miou" in rows[-1] and "reward_mean" in rows[1]
    assert load_model_dir(out, expect="smarli").config == load_model_dir(policy).config


def test_the_gradient_probe_reports_agreement_shares_and_the_reward_along_the_gradient(policy):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("gradient_probe", Path(__file__).parents[2] / "recipes/smarli/gradient_probe.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.probe(str(policy), batches=2, layouts=2, group=2, along=(0.0, 0.5), eval_layouts=2, top=100)
    assert len(out["cosines"]) == 1 and out["halves_cosine"] == pytest.approx(out["cosines"][0])  # two batches: one pair
    assert -1.0 <= out["cosines"][0] < 0.999  # a cosine, of two different batches
    shares = [s["share"] for s in out["largest_shares"]]
    assert shares == sorted(shares, reverse=True) and sum(shares) == pytest.approx(1.0, abs=1e-4)  # every parameter listed (float32 sums)
    assert out["along"][0]["eval_reward"] == pytest.approx(mod.eval_reward(mod.probe_job(str(policy)), 2))  # no step: the policy as saved
    with pytest.raises(ValueError, match="--batches"):
        mod.probe(str(policy), batches=3)


def test_the_partial_probe_freezes_the_embeddings_or_everything_but_the_blocks(policy):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("partial_grpo", Path(__file__).parents[2] / "recipes/smarli/partial_grpo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    names = [n for n, _ in load_model_dir(str(policy), expect="smarli").named_parameters()]
    blocks = {n for n in names if n.startswith("blocks.")}
    embeddings = {n for n in names if n.split(".")[0] in mod.EMBEDDINGS}
    assert embeddings >= {"segment.weight", "image_pos", "special.weight"} and not embeddings & blocks
    assert {n for n in names if mod.trains(n, "blocks")} == blocks
    assert {n for n in names if mod.trains(n, "no-embeddings")} == set(names) - embeddings
    assert all(mod.trains(n, "all") for n in names)
