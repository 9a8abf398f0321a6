"""The LVR experiment on the shapes world, in one command (docs/vision.md, docs/benchmarks.md):

    python -m reasonrl.vision.lvr.experiment --out runs/lvr

1. the embedded VLM (reasonrl/demo/vlm) gets LVR's three tokens (`lvr_policy`);
2. two SFT arms from it on the same detail questions, steps, order and optimizer: LVR (latent span
   over the region's merged tokens, teacher-forced, CE + 0.1 x MSE) and the control (same answers,
   no span); vision tower and merger frozen; `--latent-inputs own` feeds the LVR arm its own predicted
   latents instead of the region tokens (against exposure bias; not in the paper, sft.py);
   `--latent-exit end_token` trains the span's length and ends spans where the model predicts it;
3. GRPO from the LVR arm through `reasonrl train`'s loop (`grpo_recipe`: the `lvr` environment,
   accuracy + format rewards, latent mode in the engine, latents replayed, spans masked);
4. measured on held-out questions (evaluate.py): accuracy of both arms; the LVR arm with 4, 8 and
   16 latent steps; its latents replaced by zeros, by noise and by the true region tokens;
   reconstruction cosine; GRPO against SFT. `OUT/results.json` holds every figure.

A rerun of some stages keeps the other stages' figures in results.json. A stage named in --stages
is run again, replacing what it made before, except that GRPO stopped by Ctrl-C or SIGTERM resumes
from its checkpoint in OUT/grpo when rerun with the same settings on the same OUT/sft-lvr
(`--stages grpo`: retraining the LVR arm starts GRPO over). results.json records the settings each
stage was made with (`stages`); figures or a model kept from a stage not named in --stages and made
with other settings are refused, naming the differing keys, rather than reported under the new ones.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import torch

from reasonrl.config import differences
from reasonrl.demo.vlm_policy import SHIPPED
from reasonrl.engine.latent import LatentConfig
from reasonrl.envs.shapes import vqa_prompt
from reasonrl.models.chat import ChatEncoder, multimodal
from reasonrl.models.loader import MASTER_DTYPE, save_model
from reasonrl.rl.run import settings_changed
from reasonrl.vision.lvr import evaluate as ev
from reasonrl.vision.lvr.env import LVRShapesConfig, LVRShapesEnvironment
from reasonrl.vision.lvr.train import LVRExample, LVRTrainConfig, lvr_policy, make_examples, train_sft_lvr


@dataclass
class LVRExperimentConfig:
    out: str = "runs/lvr"
    """Directory of the checkpoints, the GRPO run and results.json."""
    base: str = str(SHIPPED)
    """The vision-language checkpoint to start from (the embedded VLM)."""
    train_problems: int = 3000
    """Distinct training questions (detail family, scenes as image_size, min_objects and max_objects say)."""
    eval_problems: int = 300
    """Held-out questions (the test split) every figure is measured on."""
    sft_steps: int = 800
    """SFT steps of each arm."""
    batch: int = 16
    """SFT examples per step."""
    lr: float = 1e-3
    """SFT peak learning rate."""
    mse_weight: float = 0.1
    """Weight of the latent MSE next to cross-entropy in the LVR arm (LVR: 0.1)."""
    latent_inputs: Literal["teacher", "own"] = "teacher"
    """Inputs of the LVR arm's latent rows in SFT: teacher (the true region tokens, LVR) or own (the model's
    own predicted latents, as inference feeds back; not in the paper, vision/lvr/sft.py)."""
    own_passes: int = 1
    """With --latent-inputs own: forwards without gradient giving the latents fed to the graded one (each
    fed the previous one's; p passes: the first p latents of a span are the autoregressive ones)."""
    pointer_weight: float = 0.0
    """Weight of the pointer loss in the LVR arm (its region token among the image's tokens; vision/lvr/sft.py)."""
    pointer_target: Literal["token", "region", "remaining"] = "token"
    """The pointer loss's right answer for latent k: region token k, any of the region's tokens, or any of region
    tokens k onwards (vision/lvr/sft.py)."""
    latent_feedback: Literal["state", "image_token"] = "state"
    """What a latent position is fed at inference (engine/latent.py): the state (LVR) or the image token nearest
    to it; recorded in the LVR arm's checkpoint, and fed back by --latent-inputs own's passes."""
    latent_exit: Literal["steps", "end_token"] = "steps"
    """How a span ends at inference (engine/latent.py): after latent_steps latents (LVR), or when the model predicts
    `<|lvr_end|>` (at most latent_steps; SFT then trains the span's length, vision/lvr/sft.py); recorded in the LVR
    arm's checkpoint."""
    stages: tuple[str, ...] = ("sft", "grpo")
    """sft (train and measure the arms) and grpo (from OUT/sft-lvr, e.g. an earlier run's)."""
    arms: tuple[str, ...] = ("plain", "lvr")
    """SFT arms to train and measure: plain (the control without latents) and lvr."""
    grpo_steps: int = 40
    """GRPO steps from the LVR arm, OUT/sft-lvr (0: skip GRPO)."""
    grpo_lr: float = 3e-4
    """GRPO learning rate."""
    latent_steps: int = 8
    """Latent steps of the engine for the main figures and GRPO (LVR: 8); with latent_exit end_token, the most."""
    sweep: tuple[int, ...] = (4, 8, 16)
    """Latent steps the accuracy is measured at."""
    seed: int = 0
    """Seeds data, order and noise."""
    autocast: Literal["bfloat16", "float16"] | None = None
    """SFT and GRPO compute dtype on CUDA under torch.autocast, over float32 weights; None: float32 throughout."""
    image_size: int = 224
    """Width and height of the scenes (the embedded VLM's 224: 8 x 8 merged tokens)."""
    min_objects: int = 1
    """Fewest objects in a scene."""
    max_objects: int = 4
    """Most objects in a scene (the world draws up to 8): more objects, more distractors to look past."""

    def scenes(self) -> LVRShapesConfig:
        return LVRShapesConfig(image_size=self.image_size, min_objects=self.min_objects, max_objects=self.max_objects)


LEGACY_SETTINGS = {"image_size": 224, "min_objects": 1, "max_objects": 4, "autocast": None, "pointer_weight": 0.0,
                   "pointer_target": "token", "latent_feedback": "state", "latent_exit": "steps"}
"""What stages recorded before these settings were options were made with."""


def grpo_recipe(cfg: LVRExperimentConfig, policy: str) -> dict:
    """The GRPO run as a `reasonrl train` recipe (also recipes/lvr-shapes.yaml)."""
    return {"model": {"path": policy, "freeze_vision": True, "autocast": cfg.autocast},
            "env": {"name": env_spec(cfg), "eval_size": cfg.eval_problems},
            "rollout": {"prompts_per_step": 8, "samples_per_prompt": 8, "max_tokens": 32, "temperature": 1.0},
            "engine": {"max_num_seqs": 128, "kv_cache_memory": "256MiB", "max_model_len": 512,
                       "latent_steps": cfg.latent_steps},
            "loss": {"name": "grpo"}, "optim": {"lr": cfg.grpo_lr, "warmup_steps": 2, "max_tokens_per_microbatch": 16384},
            "train": {"steps": cfg.grpo_steps, "seed": cfg.seed, "run_dir": str(Path(cfg.out) / "grpo"),
                      "save_every": cfg.grpo_steps, "keep_checkpoints": 1}}


def env_spec(cfg: LVRExperimentConfig) -> str:
    """The `lvr:` spec of the experiment's scenes: max_objects always, the others where not the default
    (the spec of runs made before they were options is unchanged, so their GRPO runs resume)."""
    default = LVRShapesConfig()
    extra = "".join(f"&{key}={getattr(cfg, key)}" for key in ("image_size", "min_objects")
                    if getattr(cfg, key) != getattr(default, key))
    return f"lvr:?max_objects={cfg.max_objects}{extra}"


def eval_items(model, tok, env: LVRShapesEnvironment, examples: list[LVRExample], problems) -> list[ev.EvalItem]:
    encoder, items = ChatEncoder(tok, model), []
    for problem, ex in zip(problems, examples):
        prompt = vqa_prompt(problem, "test")
        items.append(ev.EvalItem(multimodal(encoder(prompt.messages)), partial(env.accuracy, prompt),
                                 ex.image[ex.lvr.targets], ex.image))
    return items


def measure(model, tok, items, latent: LatentConfig, cfg: LVRExperimentConfig) -> dict:
    """Accuracy with `cfg.latent_steps` latents, reconstruction, the interventions, the steps sweep."""
    outs = ev.generate(model, tok, items, latent.steps)
    res = {"accuracy": ev.accuracy(tok, items, outs), **ev.reconstruction(items, outs), **ev.span_length(items, outs)}
    for kind in ev.INTERVENTIONS:
        res[f"accuracy_{kind}"], res["intervened_share"] = ev.intervened(model, tok, items, outs, kind, latent, cfg.seed)
    res["by_steps"] = {s: ev.accuracy(tok, items, ev.generate(model, tok, items, s)) for s in cfg.sweep}
    return res


def run_experiment(cfg: LVRExperimentConfig, log=None) -> dict:
    """Every stage of `cfg`; -> the figures (also written to OUT/results.json). `log`: progress lines
    (default: standard error)."""
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    out, start = Path(cfg.out), time.time()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    env = LVRShapesEnvironment(cfg.scenes())
    model, tok = lvr_policy(cfg.base)
    latent = LatentConfig.from_tokenizer(tok, steps=cfg.latent_steps)
    if set(cfg.arms) - {"plain", "lvr"} or set(cfg.stages) - {"sft", "grpo"}:
        raise ValueError(f"LVRExperimentConfig: known stages are sft and grpo, arms plain and lvr; got stages "
                         f"{list(cfg.stages)}, arms {list(cfg.arms)}")
    arms = cfg.arms if "sft" in cfg.stages else ()
    train = make_examples(model, tok, env.problems(cfg.train_problems, seed=cfg.seed), latent) if arms else []
    test_problems = env.problems(cfg.eval_problems, seed=cfg.seed, split="test")
    items = eval_items(model, tok, env, make_examples(model, tok, test_problems, latent), test_problems)
    log(f"data: {len(train)} train, {len(items)} eval examples ({time.time() - start:.0f}s)")
    saved = out / "results.json"  # a rerun of some stages keeps the others' figures
    results: dict = {**(json.loads(saved.read_text()) if saved.is_file() else {}), "config": asdict(cfg)}
    grpo = "grpo" in cfg.stages and cfg.grpo_steps
    _check_kept(cfg, out, results, arms, grpo, log)
    resume = bool(grpo) and _resumes_grpo(cfg, out, results, arms)
    results.setdefault("stages", {})
    for arm in arms:
        policy = copy.deepcopy(model)
        sft = LVRTrainConfig(latents=arm == "lvr", steps=cfg.sft_steps, batch=cfg.batch, lr=cfg.lr, weight=cfg.mse_weight,
                             latent_inputs=cfg.latent_inputs, own_passes=cfg.own_passes, autocast=cfg.autocast,
                             pointer_weight=cfg.pointer_weight, pointer_target=cfg.pointer_target,
                             feedback=cfg.latent_feedback, exit=cfg.latent_exit, seed=cfg.seed)
        sft_start = time.time()
        history = train_sft_lvr(policy, train, sft, partial(_log_step, log, arm))
        sft_seconds = time.time() - sft_start
        save_model(policy, out / f"sft-{arm}", tok)
        results[f"sft_{arm}"] = {"final_loss": history[-1], "sft_seconds": sft_seconds,
                                 **(measure(policy, tok, items, latent, cfg) if arm == "lvr" else
                                    {"accuracy": ev.accuracy(tok, items, ev.generate(policy, tok, items, None))})}
        results["stages"][f"sft_{arm}"] = stage_settings(cfg, "sft")
        log(f"sft {arm}: {results[f'sft_{arm}']} ({time.time() - start:.0f}s)")
        _save(out, results)
    if grpo:
        results.pop("grpo", None)
        results["stages"]["grpo"] = stage_settings(cfg, "grpo")  # before training: a stopped run is bound to it
        _save(out, results)
        results["grpo"] = run_grpo(cfg, tok, items, latent, resume)
        log(f"grpo: {results['grpo']} ({time.time() - start:.0f}s)")
    results["seconds"] = time.time() - start
    _save(out, results)
    return results


def stage_settings(cfg: LVRExperimentConfig, stage: str) -> dict:
    """What a stage's figures depend on: every setting but where and which stages run (and for SFT, GRPO's)."""
    skip = {"out", "stages", "arms"} | ({"grpo_steps", "grpo_lr"} if stage == "sft" else set())
    return json.loads(json.dumps({k: v for k, v in asdict(cfg).items() if k not in skip}))


def _check_kept(cfg: LVRExperimentConfig, out: Path, results: dict, arms, grpo: bool, log) -> None:
    """Refuse figures this run keeps, or a model it goes on from, made with other settings (a stage
    it runs is not kept: its old run is replaced, or resumed when made with these settings)."""
    kept = {f"sft_{arm}" for arm in ("plain", "lvr") if f"sft_{arm}" in results and arm not in arms}
    if grpo:
        kept |= {"sft_lvr"} if "lvr" not in arms else set()  # GRPO starts from OUT/sft-lvr as it is
    elif "grpo" in results:
        kept.add("grpo")
    recorded = results.get("stages")
    if kept and recorded is None:
        log(f"{out / 'results.json'} records no stage settings (made before they were recorded); "
            "keeping its stages as they are")
    for stage in sorted(kept & set(recorded or {})):
        changed = differences({**LEGACY_SETTINGS, **recorded[stage]}, stage_settings(cfg, stage.split("_")[0]))
        if changed:
            raise ValueError(settings_changed(f"{out}: {stage} was made with other settings", changed,
                                              "rerun it (--stages), rerun with the saved settings, or choose another --out"))


def _resumes_grpo(cfg: LVRExperimentConfig, out: Path, results: dict, arms) -> bool:
    """Whether GRPO goes on with OUT/grpo instead of replacing it: a stopped run (a checkpoint short of
    grpo_steps) made with these settings, from the OUT/sft-lvr it would start from (not retrained now)."""
    from reasonrl.rl.checkpoint import checkpoint_step, latest_checkpoint

    made = (results.get("stages") or {}).get("grpo")
    done = checkpoint_step(latest_checkpoint(out / "grpo"))
    return "lvr" not in arms and made is not None and {**LEGACY_SETTINGS, **made} == stage_settings(cfg, "grpo") \
        and 0 < done < cfg.grpo_steps


def run_grpo(cfg: LVRExperimentConfig, tok, items, latent: LatentConfig, resume: bool = False) -> dict:
    """GRPO from OUT/sft-lvr; `resume`: go on with the stopped run in OUT/grpo, else start it over."""
    from reasonrl.models import load_model
    from reasonrl.rl.checkpoint import latest_checkpoint
    from reasonrl.rl.config import from_dict
    from reasonrl.rl.train import RunControl, run_training

    recipe = from_dict(grpo_recipe(cfg, str(Path(cfg.out) / "sft-lvr")))
    hint = f"the same command with --stages grpo and the same settings (it goes on from {recipe.train.run_dir})"
    code = run_training(recipe, RunControl(overwrite=not resume), console=False, resume=hint)
    if code != 0:  # stopped (Ctrl-C, SIGTERM) after saving a checkpoint; run_training said how to resume
        raise SystemExit(code)
    policy = load_model(latest_checkpoint(Path(recipe.train.run_dir)), dtype=MASTER_DTYPE)  # as the SFT arms are measured
    return measure(policy, tok, items, latent, cfg)


def markdown(results: dict) -> str:
    """The figures as the table of docs/benchmarks.md ("LVR on the shapes world")."""
    arms = [("control SFT", results.get("sft_plain")), ("LVR SFT", results.get("sft_lvr")), ("LVR GRPO", results.get("grpo"))]
    arms = [(name, r) for name, r in arms if r]

    def cell(r, key):
        return f"{r[key]:.3f}" if isinstance(r.get(key), float) else "-"

    rows = [("accuracy", "accuracy"), ("latents -> zeros", "accuracy_zeros"), ("latents -> noise", "accuracy_noise"),
            ("latents -> random image tokens", "accuracy_random_tokens"), ("latents -> region tokens", "accuracy_oracle"),
            ("latent cosine", "latent_cosine"), ("mean-token cosine", "mean_token_cosine"),
            ("latent's nearest image token is its region token", "latent_top1"),
            ("latent's nearest image token is in the region", "latent_in_region"),
            ("latents per span", "latent_span"), ("span as long as the region", "span_is_region")]
    lines = ["| measure | " + " | ".join(name for name, _ in arms) + " |", "|---" * (len(arms) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(cell(r, key) for _, r in arms) + " |" for label, key in rows]
    steps = [" / ".join(f"{v:.3f}" for v in r["by_steps"].values()) if "by_steps" in r else "-" for _, r in arms]
    lines.append("| accuracy by latent steps | " + " | ".join(steps) + " |")
    return "\n".join(lines)


def _log_step(log, arm: str, step: int, steps: int, stats: dict, seconds: float) -> None:
    if step % 25 == 0 or step == steps:
        log(f"sft {arm} {step}/{steps} loss {stats['loss']:.3f} ce {stats['ce']:.3f} "
            f"mse {stats['latent_mse']:.4f} input-cos {stats.get('input_cosine', float('nan')):.3f} "
            f"pointer-top1 {stats.get('pointer_top1', float('nan')):.3f} ({seconds:.0f}s)")


def _save(out: Path, results: dict) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    from reasonrl.cli.flags import add_flags, values

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_flags(parser, LVRExperimentConfig)
    cfg = LVRExperimentConfig(**values(parser.parse_args(argv), LVRExperimentConfig))
    print(markdown(run_experiment(cfg)))
    print(f"results: {Path(cfg.out) / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
