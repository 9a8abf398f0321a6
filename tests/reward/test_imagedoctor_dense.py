"""The judge as a generator's reward (DenseFlow-GRPO in miniature, on the shipped SMARLI-mini): the
dense arm weights each image token's advantage by 1 - the judge's pooled heatmap, the scalar arm by 1.
A stand-in scorer fixes the judge's output so the weighting alone is tested."""

import numpy as np
import pytest
import torch

from reasonrl.reward.imagedoctor.dense import DenseJudgeConfig, format_rows, make_job

CFG = DenseJudgeConfig(steps=1, layouts_per_step=2, samples_per_layout=2, eval_layouts=2)


class FixedJudge:
    """Scalar rewards that differ within each group, and a constant heatmap."""

    def __init__(self, heat: float):
        self.heat = heat

    def __call__(self, captions, images, grid):
        return np.arange(len(captions), dtype=np.float64) % 2, np.full((len(captions), grid, grid), self.heat)


def params(job):
    return torch.cat([p.detach().flatten() for p in job.model.parameters()]).clone()


@pytest.mark.slow  # two GRPO steps of the generator: ~15 s on a quiet CPU
def test_dense_weights_are_one_minus_the_heatmap_and_a_full_heatmap_freezes_the_policy():
    dense = make_job(CFG, "dense", FixedJudge(1.0))
    before = params(dense)
    dense.train_step()
    assert torch.equal(dense.token_weights(None), torch.zeros_like(dense.heat))
    assert torch.equal(params(dense), before)  # every token flagged as flawed: no token is pushed
    scalar = make_job(CFG, "scalar", FixedJudge(1.0))
    before = params(scalar)
    scalar.train_step()
    assert not torch.equal(params(scalar), before)  # the same judge as a scalar still trains


def test_partial_heatmap_scales_the_weights():
    job = make_job(CFG, "dense", FixedJudge(0.25))
    job.rewards(job.held[:2], np.zeros((2, 32, 32, 3), dtype=np.uint8))
    assert torch.allclose(job.token_weights(None), torch.full((2, 64), 0.75))


def test_table_names_both_arms():
    arm = {"flawed_cells_at_start": 0.2, "steps_to_repair": 3, "oracle_flawed_cells_at_start": 0.15,
           "final": {"repaired": 0.6, "drift": 0.1, "judge": 0.5, "oracle": 0.4, "oracle_repaired": 0.45},
           "evals": [{"judge": 0.3, "oracle": 0.35, "judge_oracle_r": 0.25}]}
    old = {k: v for k, v in arm.items() if k != "oracle_flawed_cells_at_start"}  # a result.json from before the oracle's maps
    old["final"] = {k: v for k, v in arm["final"].items() if k != "oracle_repaired"}
    assert format_rows({"scalar": old}).splitlines()[2].endswith("| 0.250 | - |")
    table = format_rows({"scalar": arm, "dense": arm, "ranking": {"judge_oracle_r_within": 0.125, "groups": 24, "tied_groups": 0.5,
                                                                 "oracle_std_within": 0.1, "oracle_std_between": 0.2}})
    assert "| scalar | 0.200 | 3 | 0.600 | 0.100 | 0.300 -> 0.500 | 0.350 -> 0.400 | 0.250 | 0.150, 0.450 |" in table
    assert "| dense |" in table
    assert "within layouts at start: 0.125 (24 groups; judge ties in 50% of them; the oracle's std 0.100 within groups, 0.200" in table


def test_the_judge_oracle_correlation_is_pearsons_and_zero_for_a_constant_judge():
    from reasonrl.reward.imagedoctor.dense import pearson

    oracle = np.array([0.2, 0.9, 0.5, 0.7])
    assert pearson(2 * oracle + 1, oracle) == pytest.approx(1.0)
    assert pearson(-oracle, oracle) == pytest.approx(-1.0)
    assert pearson(np.array([0.1, 0.4, 0.4, 0.1]), oracle) == pytest.approx(np.corrcoef([0.1, 0.4, 0.4, 0.1], oracle)[0, 1])
    assert pearson(np.full(4, 0.936), oracle) == 0.0  # the render-trained judge on generated images


def test_the_real_judge_scores_images_and_pools_its_maps_to_the_grid(tmp_path, monkeypatch):
    """The scorer on a tiny real judge, through the engine and `predicted_maps` (the documented
    command crashed there: it handed `predicted_maps` prompts where it read held items' masks)."""
    from reasonrl.reward.imagedoctor.build import doctor_from_vlm
    from reasonrl.reward.imagedoctor.decoder import HeatmapConfig
    from reasonrl.reward.imagedoctor.dense import JudgeScorer
    from reasonrl.reward.imagedoctor.model import save_doctor

    head = HeatmapConfig(dim=16, heads=2, mlp_dim=16, conv_channels=(8, 8), up_channels=(8, 4), mask_in_chans=4)
    judge, tok = doctor_from_vlm("reasonrl/demo/vlm", head)
    save_doctor(judge, tmp_path / "judge", tok)
    scorer = JudgeScorer(str(tmp_path / "judge"), side=64)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    scalars, heat = scorer(["a red circle", "a blue square"], images, grid=8)
    assert scalars.shape == (2,) and heat.shape == (2, 8, 8)
    assert np.isfinite(heat).all() and (heat >= 0).all() and (heat <= 1).all()
    # --scores expected: the reward is computed from expected.py's reading of the same judgements
    from reasonrl.reward.imagedoctor import dense

    read = [{"alignment": 0.5, "aesthetics": 1.0, "plausibility": 0.0, "overall": 0.0},
            {"alignment": 0.25, "aesthetics": None, "plausibility": None, "overall": None}]
    monkeypatch.setattr(dense, "expected_scores", lambda doctor, tok, prompts, responses: read[:len(responses)])
    expected = JudgeScorer(str(tmp_path / "judge"), side=64, scores="expected")
    again, heat_again = expected(["a red circle", "a blue square"], images, grid=8)
    assert np.allclose(again, [0.8 * 0.5 + 0.1, 0.8 * 0.25]) and np.array_equal(heat_again, heat)
    with pytest.raises(ValueError, match="--scores: unknown 'mean'"):
        JudgeScorer(str(tmp_path / "judge"), side=64, scores="mean")
    with monkeypatch.context() as m:  # a judge whose tokenizer writes digits in several tokens
        m.setattr(dense, "digit_ids", lambda tokenizer: None)
        with pytest.raises(ValueError, match="--scores expected needs one token per digit; the tokenizer of .*judge"):
            JudgeScorer(str(tmp_path / "judge"), side=64, scores="expected")
        JudgeScorer(str(tmp_path / "judge"), side=64)  # written scores need no digits
    # --scalar-judge: the scalar from the other judge's reading, the maps still from the first judge
    save_doctor(judge, tmp_path / "scores-judge", tok)
    both = JudgeScorer(str(tmp_path / "judge"), side=64, scores="expected", scalar_judge=str(tmp_path / "scores-judge"))
    monkeypatch.setattr(dense, "expected_scores", lambda doctor, tok, prompts, responses: [
        {"alignment": 1.0 if doctor is both.scalar.doctor else 0.0, "aesthetics": 0.0, "plausibility": 0.0,
         "overall": 0.0}] * len(responses))
    scalars_other, heat_other = both(["a red circle", "a blue square"], images, grid=8)
    assert np.allclose(scalars_other, [0.8, 0.8]) and np.array_equal(heat_other, heat)


def test_the_scorer_leaves_room_for_a_whole_judgement_after_a_larger_sides_prompt(tmp_path, monkeypatch):
    """The scorer's engine held 640 tokens whatever --judge-side was: at 448 px the prompt is ~346
    tokens and only ~294 of the judgement's were generated (cut before </answer>: no scores)."""
    from types import SimpleNamespace

    from reasonrl.engine.llm import LLM
    from reasonrl.reward.imagedoctor.build import doctor_from_vlm
    from reasonrl.reward.imagedoctor.decoder import HeatmapConfig
    from reasonrl.reward.imagedoctor.dense import JudgeScorer
    from reasonrl.reward.imagedoctor.model import save_doctor

    seen = []

    def generate(self, prompts, params=None, progress=False):  # the engine's size and request, no decoding
        seen.append((self.engine.max_model_len, max(len(p.input_ids) for p in prompts), params.max_tokens))
        return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=[])]) for _ in prompts]

    monkeypatch.setattr(LLM, "generate", generate)
    head = HeatmapConfig(dim=16, heads=2, mlp_dim=16, conv_channels=(8, 8), up_channels=(8, 4), mask_in_chans=4)
    judge, tok = doctor_from_vlm("reasonrl/demo/vlm", head)
    save_doctor(judge, tmp_path / "judge", tok)
    scorer = JudgeScorer(str(tmp_path / "judge"), side=448)
    scorer(["a red circle left of a blue square."], np.zeros((1, 32, 32, 3), dtype=np.uint8), grid=8)
    [(context, prompt, max_tokens)] = seen
    assert prompt > 300 and context - prompt >= max_tokens
    from reasonrl.reward.imagedoctor.evaluate import JUDGEMENT_TOKENS

    assert max_tokens == JUDGEMENT_TOKENS
    engine = scorer.llm  # the scorer is called every training step: one engine, not one per call
    scorer(["a red circle."], np.zeros((1, 32, 32, 3), dtype=np.uint8), grid=8)
    assert scorer.llm is engine and len(seen) == 2


def test_the_cells_arm_takes_each_cells_advantage_against_the_same_cell_of_its_group():
    """R_D = R (1 - heatmap) per cell: two images of one layout, both scored 1, one flagged at cell 0
    alone; only cell 0 differs between them, so only cell 0 has an advantage, negative where flagged."""
    job = make_job(CFG, "cells", FixedJudge(0.0))
    heat = torch.zeros(4, 64)
    heat[0, 0] = 1.0  # image 0 (group 0): cell 0 flagged
    heat[3, 5] = 0.5  # image 3 (group 1): cell 5 half flagged
    job.heat = heat
    adv = job.token_advantages(torch.ones(4), torch.tensor([0, 0, 1, 1]), None)
    assert adv.shape == (4, 64)
    assert adv[0, 0] < 0 < adv[1, 0] and adv[3, 5] < 0 < adv[2, 5]
    others = torch.ones(4, 64, dtype=torch.bool)
    others[:2, 0] = others[2:, 5] = False
    assert torch.equal(adv[others], torch.zeros(int(others.sum())))
    # the scalar arm under the same judge: every cell of an image gets the image's advantage, whatever the map
    scalar = make_job(CFG, "scalar", FixedJudge(0.0))
    scalar.heat = heat
    rewards, groups = torch.tensor([1.0, 0.0, 0.5, 0.5]), torch.tensor([0, 0, 1, 1])
    adv = scalar.token_advantages(rewards, groups, scalar.encode(scalar.held[:1] * 4))
    assert adv[0].unique().numel() == 1 and adv[0, 0] > 0 > adv[1, 0] and torch.equal(adv[2:], torch.zeros(2, 64))


def test_an_unknown_weighting_is_refused_by_name(tmp_path):
    from reasonrl.reward.imagedoctor.dense import run_dense

    with pytest.raises(ValueError, match=r"unknown \[.pixel.\]; known: scalar, dense, signed, cells"):
        run_dense(DenseJudgeConfig(judge=str(tmp_path), weightings=("scalar", "pixel")))


def test_without_std_normalisation_a_small_heatmap_difference_stays_a_small_advantage():
    """Per cell, GRPO's division by the group's std turns a 0.01 difference of the map into a full-size
    advantage (review probe: -1.5 against 0.5); Dr. GRPO's (std_normalize false) keeps it at its size."""
    import dataclasses

    heat = torch.zeros(4, 64)
    heat[0, 0] = 0.01
    rewards, groups = torch.full((4,), 0.9), torch.tensor([0, 0, 0, 0])
    out = {}
    for std in (True, False):
        job = make_job(dataclasses.replace(CFG, std_normalize=std), "cells", FixedJudge(0.0))
        job.heat = heat
        out[std] = job.token_advantages(rewards, groups, None)[:, 0]
    assert out[True][0] < -1.0 and out[True][1] > 0.4
    assert out[False][0] == pytest.approx(-0.9 * 0.01 * 0.75) and out[False][1] == pytest.approx(0.9 * 0.01 * 0.25)


class NoJudge:
    def __call__(self, captions, images, grid):
        raise AssertionError("a control arm asked the judge in training")


def test_the_control_arms_reward_with_the_oracle_or_with_noise_and_never_ask_the_judge():
    from reasonrl.vision.smarli.judge import judge

    images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    oracle = make_job(CFG, "oracle", NoJudge())
    layouts = oracle.held  # CFG's two held-out layouts
    rewards, stats = oracle.rewards(layouts, images)
    truth = [judge(lay, img)["reward"] for lay, img in zip(layouts, images)]
    assert torch.allclose(rewards, torch.tensor(truth, dtype=torch.float32)) and stats["oracle_reward"] == pytest.approx(np.mean(truth))
    noise = make_job(CFG, "noise", NoJudge())
    first, _ = noise.rewards(layouts, images)
    second, stats = noise.rewards(layouts, images)
    assert not torch.equal(first, second) and ((first >= 0) & (first < 1)).all()  # fresh draws, not the images' worth
    again = make_job(CFG, "noise", NoJudge())  # the same seed: the same draws
    assert torch.equal(again.rewards(layouts, images)[0], first)
    assert stats["oracle_reward"] == pytest.approx(np.mean(truth))  # still measured
    weights = noise.token_weights(noise.encode(layouts))
    assert weights.shape[0] == len(layouts) == 2 and bool((weights == 1).all())


@pytest.mark.slow  # samples the held-out layouts four times: ~10 s
def test_ranking_correlates_within_layouts_only():
    from reasonrl.reward.imagedoctor.dense import ranking
    from reasonrl.vision.smarli.judge import judge

    job = make_job(DenseJudgeConfig(steps=1, layouts_per_step=2, samples_per_layout=4, eval_layouts=6), "scalar", FixedJudge(0.0))
    seen = {}

    def oracle_plus_offset(captions, images, grid):  # the oracle's reward, plus a large offset per caption
        truth = np.array([judge(lay, img)["reward"] for lay, img in zip(seen["layouts"], images)])
        offset = np.array([10.0 * sorted(set(captions)).index(c) for c in captions])
        return truth + offset, np.zeros((len(captions), grid, grid))

    def anti(captions, images, grid):
        r, heat = oracle_plus_offset(captions, images, grid)
        return -r, heat

    encode = job.encode
    job.encode = lambda layouts: (seen.__setitem__("layouts", layouts), encode(layouts))[1]
    good = ranking(job, oracle_plus_offset)
    assert good["judge_oracle_r_within"] == pytest.approx(1.0) and good["groups"] == 6
    assert good["oracle_std_within"] > 0  # the shipped SMARLI's images of one layout differ
    assert ranking(job, anti)["judge_oracle_r_within"] == pytest.approx(-1.0)
    tied = ranking(job, FixedJudge(0.0))  # rewards 0, 1, 0, 1: ties in every group of four
    assert tied["tied_groups"] == 1.0


def test_ranking_reports_the_oracles_spread_within_and_between_layouts(monkeypatch):
    import reasonrl.vision.smarli.judge as oracle_module
    from reasonrl.reward.imagedoctor.dense import ranking

    job = make_job(DenseJudgeConfig(steps=1, layouts_per_step=2, samples_per_layout=4, eval_layouts=3), "scalar", FixedJudge(0.0))
    values = iter([0.0, 1.0, 0.0, 1.0, 2.0, 3.0, 2.0, 3.0, 6.0, 7.0, 6.0, 7.0])  # groups' means 0.5, 2.5, 6.5
    monkeypatch.setattr(oracle_module, "judge_with_flaws",
                        lambda layout, image: ({"reward": next(values)}, np.zeros((64, 64), np.float32)))
    out = ranking(job, FixedJudge(0.0))  # FixedJudge: 0, 1, 0, 1 in every group, as the oracle
    assert out["oracle_std_within"] == pytest.approx(0.5)
    assert out["oracle_std_between"] == pytest.approx(np.std([0.5, 2.5, 6.5]))
    assert out["judge_oracle_r_within"] == pytest.approx(1.0) and out["tied_groups"] == 1.0


@pytest.mark.parametrize("arm", ["oracle-dense", "oracle-signed"])
def test_the_oracle_map_arms_weight_each_token_by_the_oracles_flaw_map(arm):
    from reasonrl.vision.gen.images import make_images
    from reasonrl.vision.smarli.grpo import HELD_OUT_SEED
    from reasonrl.vision.smarli.judge import flaw_map, judge

    job = make_job(CFG, arm, NoJudge())
    layouts = job.held  # CFG's two held-out layouts, and below their own renders
    images = make_images(job.images, 2, HELD_OUT_SEED + CFG.seed).images.copy()
    x0, y0, x1, y1 = (int(round(v * 32)) for v in layouts[0].objects[0].box)
    images[0, y0:y1, x0:x1] = 128  # the first layout's first object painted over
    rewards, _ = job.rewards(layouts, images)
    truth = [judge(lay, img)["reward"] for lay, img in zip(layouts, images)]
    assert torch.allclose(rewards, torch.tensor(truth, dtype=torch.float32))
    flags = [flaw_map(lay, img) for lay, img in zip(layouts, images)]  # (64, 64): 8 x 8 pixels per cell
    pooled = torch.from_numpy(np.stack([f.reshape(8, 8, 8, 8).mean(axis=(1, 3)).ravel() for f in flags])).float()
    assert (pooled[0] > 0).any() and (pooled[0] == 0).any() and not (pooled[1] > 0).any()  # the painted box only
    groups = torch.tensor([0, 1])
    adv = job.token_advantages(torch.tensor([0.2, 0.9]), groups, job.encode(layouts))  # one image per group: A = 0
    assert bool((adv == 0).all())
    pairs = torch.tensor([0, 0])  # the two images as one group: the painted one worse
    adv = job.token_advantages(rewards, pairs, job.encode(layouts))
    scalar = make_job(CFG, "oracle", NoJudge())
    scalar.rewards(layouts, images)
    base = scalar.token_advantages(rewards, pairs, scalar.encode(layouts))
    assert base[0].max() < 0 < base[1].min()
    if arm == "oracle-dense":
        expected = base * (1.0 - pooled)
    else:  # a worse image's flagged cells take the blame, a better one's unflagged cells the credit
        expected = base * torch.where(base >= 0, 1.0 - pooled, pooled)
    assert torch.allclose(adv, expected)


def test_the_signed_arm_credits_good_cells_of_better_images_and_blames_flawed_cells_of_worse_ones():
    layouts_images = lambda job: (job.held[:2] * 2, np.zeros((4, 32, 32, 3), dtype=np.uint8))  # noqa: E731
    scalar, signed = make_job(CFG, "scalar", FixedJudge(0.25)), make_job(CFG, "signed", FixedJudge(0.25))
    groups = torch.tensor([0, 0, 1, 1])
    base = scalar.token_advantages(scalar.rewards(*layouts_images(scalar))[0], groups, scalar.encode(layouts_images(scalar)[0]))
    rewards, _ = signed.rewards(*layouts_images(signed))  # 0, 1, 0, 1: one worse and one better image per group
    adv = signed.token_advantages(rewards, groups, signed.encode(layouts_images(signed)[0]))
    better = base > 0
    assert better.any() and (~better).any()
    assert torch.allclose(adv[better], 0.75 * base[better]) and torch.allclose(adv[~better], 0.25 * base[~better])
    # a map that flags nothing: the better image's cells keep their whole credit, the worse image's get no blame
    clean = make_job(CFG, "signed", FixedJudge(0.0))
    adv = clean.token_advantages(clean.rewards(*layouts_images(clean))[0], groups, clean.encode(layouts_images(clean)[0]))
    assert torch.allclose(adv[better], base[better]) and bool((adv[~better] == 0).all())


def test_a_judge_side_the_generators_images_do_not_divide_is_refused_by_name():
    from types import SimpleNamespace

    from reasonrl.reward.imagedoctor.dense import JudgeScorer

    images = np.arange(2 * 32 * 32 * 3, dtype=np.uint8).reshape(2, 32, 32, 3)
    big = JudgeScorer.upscaled(SimpleNamespace(side=224), images)
    assert big.shape == (2, 224, 224, 3) and np.array_equal(big[:, ::7, ::7], images)
    for side in (230, 16):
        with pytest.raises(ValueError, match=f"--judge-side {side} is not a multiple of the generator's 32-px images"):
            JudgeScorer.upscaled(SimpleNamespace(side=side), images)
