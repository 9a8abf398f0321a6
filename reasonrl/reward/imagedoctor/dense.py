"""The judge as the reward of an image generator: scalar against dense (DenseFlow-GRPO in miniature).

    python -m reasonrl.reward.imagedoctor.dense --judge runs/imagedoctor/grpo/model

ImageDoctor (arXiv 2510.01010) post-trains SD3.5-M with Flow-GRPO whose reward is the judge's
0.8 alignment + 0.1 aesthetics + 0.1 plausibility, either as one scalar per image or densely: the
per-pixel loss weighted by one minus the judge's heatmap (the mean of its two maps, pooled to the
latent grid). Here the generator is the shipped SMARLI-mini (reasonrl/vision/gen/shipped/smarli,
8 x 8 cell tokens of 4 px; `--policy` another) under its own layout GRPO (vision/smarli/grpo.py);
"dense" weights each image token's advantage by 1 - the heatmap pooled to its cell, "scalar" by 1
(no in-box bonus in any arm, so they differ only by the heatmap), "signed" by 1 - heatmap on a better
image and by the heatmap on a worse one, and "cells" takes the paper's formula R_D(h, w) = R (1 -
heatmap(h, w)) literally: a reward per cell, whose advantage is taken against the same cell of the
layout's other images (WEIGHTINGS). Equal steps, seeds and layouts. Controls bound what any of them can
show with the recipe: `oracle` trains on the oracle detector's layout reward (the truth the judge stands
in for), `oracle-dense` and `oracle-signed` on it with the oracle's own flaw maps for the judge's
heatmaps, `noise` on a random reward.

Measured on held-out layouts sampled with one fixed generator seed before training and at every
`eval_every` steps: the judge's scalar and the oracle detector's layout reward (vision/smarli/
judge.py), and their Pearson r over the images (does the judge tell the generator's good images from
its bad ones?); flawed cells = those whose pooled heatmap is >= 0.5 at step 0; repaired = the share of
them below 0.5 now; drift = the share of the other cells whose token changed since step 0; steps to
repair = the first evaluated step with half of the flawed cells repaired (None: never); the same
share for the cells the oracle's flaw maps flag at step 0 (`oracle_repaired`, the truth's view of
repair, whatever the arm).

Departures: the judge sees the 32-px image upscaled to 224 px by pixel repetition (out of the
distribution of a judge trained on 224-px renders; `bench imagedoctor --generator` trains one on
such images);
a masked next-set generator instead of a flow model (the per-token log-probs play the per-pixel
SDE log-probs' part); no KL, no EMA.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from reasonrl.reward.imagedoctor.evaluate import (JUDGEMENT_TOKENS, generate_judgements, judge_engine,
                                                  needed_len, pearson, predicted_maps)
from reasonrl.reward.imagedoctor.expected import digit_ids, expected_scores
from reasonrl.reward.imagedoctor.export import judge_messages
from reasonrl.reward.imagedoctor.judgement import parse_judgement
from reasonrl.reward.imagedoctor.rewards import dense_reward, judge_reward


SCORES = ("written", "expected")
WEIGHTINGS = ("scalar", "dense", "signed", "cells", "oracle", "oracle-dense", "oracle-signed", "noise")
"""scalar: every token gets its image's advantage; dense (DenseFlow-GRPO's code): that advantage
weighted by 1 - the judge's heatmap at the token's cell; signed: weighted by 1 - heatmap where the
advantage is positive and by the heatmap where it is negative (credit to an image's good cells, blame
to its flawed ones; `dense` instead blames a worse-than-its-group image's good cells and spares its
flawed ones); cells (the paper's formula R_D = R (1 - heatmap)): a reward per cell, each cell's
advantage taken against the same cell of its group's other images.
Controls that do not ask the judge in training: oracle (the oracle detector's layout reward, what the
judge stands in for: the most a scalar reward can do with this recipe), oracle-dense and oracle-signed
(that reward, with the dense or signed weighting by the oracle's own flaw map, vision/smarli/
judge.flaw_map: each weighting with the truth's map instead of a judge's) and noise (a uniform random reward: what
the recipe does to the policy with no signal at all)."""
ORACLE_MAPS = ("oracle-dense", "oracle-signed")
DENSE, SIGNED = ("dense", "oracle-dense"), ("signed", "oracle-signed")


@dataclass
class DenseJudgeConfig:
    judge: str = "runs/imagedoctor/grpo/model"
    """The trained judge (`reasonrl bench imagedoctor` writes OUT/sft/model and OUT/grpo/model)."""
    policy: str = "reasonrl/vision/gen/shipped/smarli"
    """The generator: a SMARLI model directory."""
    out: str = "runs/imagedoctor-dense"
    """Where result.json goes."""
    weightings: tuple[str, ...] = ("scalar", "dense")
    """Arms to run, each from the same policy at equal steps, of WEIGHTINGS."""
    steps: int = 12
    """GRPO steps per arm."""
    layouts_per_step: int = 4
    """Layouts per step."""
    samples_per_layout: int = 4
    """Images per layout (the group)."""
    lr: float = 2e-4
    """AdamW learning rate (the shipped layout GRPO's)."""
    eval_layouts: int = 24
    """Held-out layouts measured."""
    eval_every: int = 4
    """Measure every this many steps."""
    std_normalize: bool = True
    """Divide advantages by their group's reward std (GRPO; in the cells arm, each cell's group of four
    values, so a small difference in the heatmap becomes a full-size advantage); false: Dr. GRPO's."""
    judge_side: int = 224
    """Side the judge sees the image at (the 32-px image repeated up to it)."""
    scores: str = "written"
    """How the judge's scores are read: `written` (parsed from its text, as ImageDoctor's scorer) or
    `expected` (the mean of its digit probabilities where it wrote them, expected.py)."""
    scalar_judge: str | None = None
    """Another judge whose scores make the scalar reward (e.g. the bench's cold start, OUT/sft/cold_start/
    model, which reads alignment better than the whole judge); the heatmaps stay `judge`'s. None: `judge`'s."""
    seed: int = 0
    """Layouts and draws."""


class JudgeScorer:
    """The judge as a reward model: greedy judgement, scalar reward (from the written or the expected
    scores, SCORES; from another judge's when `scalar_judge` names one), maps pooled to the generator's grid."""

    def __init__(self, path: str, side: int, max_tokens: int = JUDGEMENT_TOKENS, scores: str = "written",
                 scalar_judge: str | None = None):
        from reasonrl.models.chat import ChatEncoder
        from reasonrl.models.tokenizer import Tokenizer
        from reasonrl.reward.imagedoctor.model import load_doctor

        if scores not in SCORES:
            raise ValueError(f"--scores: unknown {scores!r}; known: {', '.join(SCORES)}")
        self.doctor, self.tokenizer, self.scores = load_doctor(path), Tokenizer.from_dir(path), scores
        if scores == "expected" and digit_ids(self.tokenizer) is None:
            raise ValueError(f"--scores expected needs one token per digit; the tokenizer of {path} splits them otherwise")
        self.encoder, self.side, self.max_tokens = ChatEncoder(self.tokenizer, self.doctor.backbone), side, max_tokens
        self.llm = None  # built at the first call, once the prompts' length is known; rebuilt only to grow
        self.scalar = JudgeScorer(scalar_judge, side, max_tokens, scores) if scalar_judge else None

    @torch.no_grad()
    def __call__(self, captions: list[str], images: np.ndarray, grid: int) -> tuple[np.ndarray, np.ndarray]:
        """images (B, S, S, 3) -> (scalar rewards (B,), mean heatmap pooled to (B, grid, grid))."""
        big = self.upscaled(images)
        prompts, responses = self.judge(captions, big)
        scalars = self.scalar.rewards(*self.scalar.judge(captions, big)) if self.scalar else self.rewards(prompts, responses)
        maps = predicted_maps(self.doctor, prompts, responses, [big.shape[1:3]] * len(prompts))
        heat = np.stack([1.0 - dense_reward(1.0, m, (grid, grid)) for m in maps])  # pooled mean map
        return scalars, heat

    def upscaled(self, images: np.ndarray) -> np.ndarray:
        """The generator's (B, S, S, 3) images repeated up to the judge's side, which S must divide."""
        if self.side < images.shape[1] or self.side % images.shape[1]:
            raise ValueError(f"--judge-side {self.side} is not a multiple of the generator's {images.shape[1]}-px "
                             f"images (pixel repetition would show the judge {self.side // images.shape[1] * images.shape[1]} px)")
        k = self.side // images.shape[1]
        return images.repeat(k, axis=1).repeat(k, axis=2)

    def judge(self, captions: list[str], images: np.ndarray) -> tuple[list, list[list[int]]]:
        """(prompts, greedy judgements) of the images at the judge's side."""
        prompts = [self.encoder(judge_messages(c, img)) for c, img in zip(captions, images)]
        # an engine sized to these prompts (they grow with the side): every judgement gets max_tokens
        if self.llm is None or self.llm.engine.max_model_len < needed_len(prompts, self.max_tokens):
            self.llm = judge_engine(self.doctor, self.tokenizer, needed_len(prompts, self.max_tokens))
        return prompts, generate_judgements(self.doctor, self.tokenizer, prompts, self.max_tokens, self.llm)

    def rewards(self, prompts: list, responses: list[list[int]]) -> np.ndarray:
        if self.scores == "expected":
            read = expected_scores(self.doctor, self.tokenizer, prompts, responses)
        else:
            read = [parse_judgement(self.tokenizer.decode(r)).scores for r in responses]
        return np.array([judge_reward(s) for s in read])


def make_job(cfg: DenseJudgeConfig, weighting: str, scorer: JudgeScorer):
    from reasonrl.rl.advantages import AdvantageConfig
    from reasonrl.rl.config import OptimSection
    from reasonrl.rl.losses import LossConfig
    from reasonrl.vision.smarli.grpo import LayoutGRPOConfig, LayoutGRPOJob
    from reasonrl.vision.smarli.judge import judge

    noise = np.random.default_rng(cfg.seed)

    class JudgeGRPOJob(LayoutGRPOJob):
        """Layout GRPO whose reward is the judge's (or, in the controls, the oracle's or noise), each token's
        advantage weighted by the arm's map (WEIGHTINGS)."""

        def rewards(self, layouts, images):
            if weighting in ORACLE_MAPS:
                oracle, heat = oracle_scores(layouts, images, self.model.config.grid)
                self.heat = torch.from_numpy(heat.reshape(len(layouts), -1)).float()
                return torch.tensor(oracle, dtype=torch.float32), {"oracle_reward": float(oracle.mean()),
                                                                   "judge_flawed": None}
            if weighting in ("oracle", "noise"):
                oracle = np.array([judge(lay, img)["reward"] for lay, img in zip(layouts, images)])
                reward = noise.random(len(layouts)) if weighting == "noise" else oracle
                return torch.tensor(reward, dtype=torch.float32), {"oracle_reward": float(oracle.mean()),
                                                                   "judge_flawed": None}
            scalars, heat = scorer([lay.prompt for lay in layouts], images, self.model.config.grid)
            self.heat = torch.from_numpy(heat.reshape(len(layouts), -1)).float()  # (B, N), read by token_weights
            oracle = np.mean([judge(lay, img)["reward"] for lay, img in zip(layouts, images)])
            return torch.tensor(scalars, dtype=torch.float32), {"oracle_reward": float(oracle),
                                                                 "judge_flawed": float((heat >= 0.5).mean())}

        def token_weights(self, batch):
            return 1.0 - self.heat if weighting in DENSE else torch.ones_like(batch.cover, dtype=torch.float32)

        def token_advantages(self, rewards, groups, batch):
            if weighting in SIGNED:
                adv = self.advantage_fn(rewards, groups, self.adv_cfg)[:, None]
                return adv * torch.where(adv >= 0, 1.0 - self.heat, self.heat)
            if weighting != "cells":
                return super().token_advantages(rewards, groups, batch)
            # the paper's R_D(h, w) = R (1 - heatmap(h, w)): a reward per cell, each cell's advantage taken
            # against the same cell of the other samples of its layout
            cell_rewards = rewards[:, None] * (1.0 - self.heat)  # (B, N)
            n = cell_rewards.shape[1]
            cell_groups = groups[:, None] * n + torch.arange(n)
            return self.advantage_fn(cell_rewards.flatten(), cell_groups.flatten(), self.adv_cfg).view_as(cell_rewards)

    grpo = LayoutGRPOConfig(policy=cfg.policy, steps=cfg.steps, layouts_per_step=cfg.layouts_per_step,
                            samples_per_layout=cfg.samples_per_layout, in_box_weight=1.0, eval_layouts=cfg.eval_layouts,
                            seed=cfg.seed)
    return JudgeGRPOJob(grpo, LossConfig(), AdvantageConfig(std_normalize=cfg.std_normalize),
                        OptimSection(lr=cfg.lr, grad_clip=1.0))


@torch.no_grad()
def measure(job, scorer: JudgeScorer) -> dict:
    """The held-out layouts sampled with a fixed seed: tokens (B, N), pooled heat (B, N) of the judge and of
    the oracle's flaw maps, mean judge and oracle rewards."""
    tokens, scalars, heat, oracle, oracle_heat = scored_samples(job, scorer, job.held, seed=0)
    return {"tokens": tokens, "heat": heat.reshape(len(tokens), -1), "oracle_heat": oracle_heat.reshape(len(tokens), -1),
            "judge": float(scalars.mean()), "oracle": float(oracle.mean()), "judge_oracle_r": pearson(scalars, oracle)}


@torch.no_grad()
def ranking(job, scorer: JudgeScorer) -> dict:
    """Does the judge rank a layout's images as the oracle does? GRPO only ever compares the images of one
    layout: each held-out layout is sampled `samples_per_layout` times (as in training), and the judge's
    and the oracle's rewards are correlated after each group's mean is taken out (what the advantages
    see; the r over images of different layouts, `judge_oracle_r`, also counts which layouts are easy).
    `tied_groups`: the share of groups in which the judge gives two images the same reward; the oracle's
    standard deviation within groups and between the layouts' means (is there anything to rank?)."""
    g = job.cfg.samples_per_layout
    _, scalars, _, oracle, _ = scored_samples(job, scorer, [lay for lay in job.held for _ in range(g)], seed=1)
    groups, truth = scalars.reshape(-1, g), oracle.reshape(-1, g)
    centred = [(x - x.mean(1, keepdims=True)).ravel() for x in (groups, truth)]
    return {"judge_oracle_r_within": pearson(*centred),
            "tied_groups": float(np.mean([len(np.unique(row)) < g for row in groups])), "groups": len(groups),
            "oracle_std_within": float(np.sqrt(np.mean(centred[1] ** 2))), "oracle_std_between": float(truth.mean(1).std())}


def scored_samples(job, scorer: JudgeScorer, layouts: list, seed: int):
    """The policy's images of `layouts` (one draw seeded by `seed`), scored: (tokens (B, N), judge scalars
    (B,), the judge's pooled heat (B, grid, grid), oracle layout rewards (B,), the oracle's flaw maps pooled
    the same way (B, grid, grid))."""
    from reasonrl.vision.smarli.sampler import sample

    rollout = sample(job.model.eval(), job.encode(layouts), job.cfg.sample_steps, job.cfg.temperature,
                     generator=torch.Generator().manual_seed(seed))
    tokens, grid = rollout.tokens.numpy(), job.model.config.grid
    images = np.stack([job.codebook.decode(t) for t in tokens])
    scalars, heat = scorer([lay.prompt for lay in layouts], images, grid)
    return tokens, scalars, heat, *oracle_scores(layouts, images, grid)


def oracle_scores(layouts: list, images: np.ndarray, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """The oracle's layout rewards (B,) and its flaw maps (vision/smarli/judge.flaw_map) pooled to the
    generator's grid as the judge's heatmaps are, the share of each cell flagged (B, grid, grid)."""
    from reasonrl.vision.smarli.judge import judge_with_flaws

    scored = [judge_with_flaws(lay, img) for lay, img in zip(layouts, images)]
    return (np.array([scores["reward"] for scores, _ in scored]),
            np.stack([1.0 - dense_reward(1.0, flaws[None], (grid, grid)) for _, flaws in scored]))


def run_arm(cfg: DenseJudgeConfig, weighting: str, scorer: JudgeScorer, log=print) -> dict:
    job = make_job(cfg, weighting, scorer)
    start = measure(job, scorer)
    flawed, truly_flawed = start["heat"] >= 0.5, start["oracle_heat"] >= 0.5
    evals = [{"step": 0, "judge": start["judge"], "oracle": start["oracle"], "judge_oracle_r": start["judge_oracle_r"],
              "repaired": 0.0, "oracle_repaired": 0.0, "drift": 0.0}]
    train = []
    for step in range(1, cfg.steps + 1):
        stats = job.train_step()
        train.append({k: stats[k] for k in ("reward_mean", "oracle_reward", "judge_flawed")})
        if step % cfg.eval_every == 0 or step == cfg.steps:
            now = measure(job, scorer)
            repaired = float(((now["heat"] < 0.5) & flawed).sum() / max(flawed.sum(), 1))
            oracle_repaired = float(((now["oracle_heat"] < 0.5) & truly_flawed).sum() / max(truly_flawed.sum(), 1))
            drift = float(((now["tokens"] != start["tokens"]) & ~flawed).sum() / max((~flawed).sum(), 1))
            evals.append({"step": step, "judge": now["judge"], "oracle": now["oracle"], "judge_oracle_r": now["judge_oracle_r"],
                          "repaired": repaired, "oracle_repaired": oracle_repaired, "drift": drift})
            log(f"{weighting} step {step}: {evals[-1]}")
    return {"flawed_cells_at_start": float(flawed.mean()), "oracle_flawed_cells_at_start": float(truly_flawed.mean()),
            "evals": evals, "train": train,
            "steps_to_repair": next((e["step"] for e in evals[1:] if e["repaired"] >= 0.5), None),
            "final": evals[-1]}


def run_dense(cfg: DenseJudgeConfig, log=print) -> dict:
    unknown = set(cfg.weightings) - set(WEIGHTINGS)
    if unknown:
        raise ValueError(f"--weightings: unknown {sorted(unknown)}; known: {', '.join(WEIGHTINGS)}")
    scorer = JudgeScorer(cfg.judge, cfg.judge_side, scores=cfg.scores, scalar_judge=cfg.scalar_judge)
    result = {"config": asdict(cfg), "device": f"CPU, {torch.get_num_threads()} threads"}
    result["ranking"] = ranking(make_job(cfg, "scalar", scorer), scorer)
    log(f"the judge against the oracle within layouts: {result['ranking']}")
    for weighting in cfg.weightings:
        torch.manual_seed(cfg.seed)
        result[weighting] = run_arm(cfg, weighting, scorer, log)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    (Path(cfg.out) / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def format_rows(result: dict) -> str:
    lines = ["| reward | flawed cells at start | steps to repair half | repaired | drift of unflawed cells | judge start -> end | "
             "oracle start -> end | judge-oracle r at start | oracle-flagged cells at start, repaired |",
             "|---|---|---|---|---|---|---|---|---|"]
    for arm in WEIGHTINGS:
        if arm in result:
            r, e0, e1 = result[arm], result[arm]["evals"][0], result[arm]["final"]
            truth = (f"{r['oracle_flawed_cells_at_start']:.3f}, {e1['oracle_repaired']:.3f}"
                     if "oracle_repaired" in e1 else "-")  # results written before the oracle's maps were measured
            lines.append(f"| {arm} | {r['flawed_cells_at_start']:.3f} | {r['steps_to_repair']} | {e1['repaired']:.3f} | "
                         f"{e1['drift']:.3f} | {e0['judge']:.3f} -> {e1['judge']:.3f} | {e0['oracle']:.3f} -> {e1['oracle']:.3f} | "
                         f"{e0.get('judge_oracle_r', float('nan')):.3f} | {truth} |")
    if "ranking" in result:
        r = result["ranking"]
        lines.append(f"\njudge-oracle r within layouts at start: {r['judge_oracle_r_within']:.3f} "
                     f"({r['groups']} groups; judge ties in {r['tied_groups']:.0%} of them; the oracle's std "
                     f"{r.get('oracle_std_within', float('nan')):.3f} within groups, "
                     f"{r.get('oracle_std_between', float('nan')):.3f} between layouts)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import functools

    from reasonrl.cli.flags import add_flags, values

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_flags(parser, DenseJudgeConfig)
    print(format_rows(run_dense(DenseJudgeConfig(**values(parser.parse_args(argv), DenseJudgeConfig)),
                                functools.partial(print, flush=True))))


if __name__ == "__main__":
    main()
