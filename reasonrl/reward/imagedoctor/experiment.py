"""`reasonrl bench imagedoctor`: ImageDoctor-mini trained and measured on the shapes world.

    python -m reasonrl.reward.imagedoctor.experiment --out runs/imagedoctor   (same as the bench)

From the embedded VLM (reasonrl/demo/vlm): (1) SFT of the judge in ImageDoctor's two stages, a cold
start on the four scores alone (cross-entropy; sft/cold_start/, measured, recorded and kept on its
own), then the full text with task tokens (cross-entropy plus heatmap MSE), (2) the ablation without
task tokens on (1)'s frozen judge (ablation.py: two fresh heads, task-token prompted or learned
queries), (3) GRPO from (1) through the ordinary
trainer with `JudgeEnvironment`'s rewards. Each is measured on the same held-out images
(`evaluate.judge_metrics`). Stages already finished under `out` are read back (sft/, ablation/,
grpo/), so a rerun after a stop goes on where it was; once SFT has finished, the ablation and GRPO
may run in separate processes (either is refused, before anything is written, until it has). GRPO
stopped by Ctrl-C or SIGTERM saves a checkpoint and resumes from it. Each stage records the
settings it depends on (STAGE/stage.json; ablation and GRPO also depend on SFT's): a stage made
with other settings is refused, naming the differing keys, rather than reused under the new ones.
Judgements are generated up to `max_tokens`, refused if shorter than the data's longest target (a
judgement cut before </answer> parses to no scores).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

from reasonrl.config import differences
from reasonrl.models.tokenizer import Tokenizer
from reasonrl.reward.imagedoctor.build import cold_start_items, doctor_from_vlm, judge_items, longest_target
from reasonrl.reward.imagedoctor.decoder import HeatmapConfig
from reasonrl.reward.imagedoctor.evaluate import JUDGEMENT_TOKENS, judge_metrics
from reasonrl.reward.imagedoctor.export import DoctorDataConfig, judge_examples
from reasonrl.reward.imagedoctor.sft import JudgeSFTConfig, train_judge_sft
from reasonrl.rl.metrics import read_metrics
from reasonrl.rl.run import settings_changed

STAGE_KEYS = {"sft": ("vlm", "generator", "train_images", "eval_images", "cold_start_epochs", "sft_epochs", "sft_lr",
                     "train_vision", "max_tokens", "autocast", "seed"),
              "ablation": ("ablation_steps",),
              "grpo": ("grpo_steps", "grpo_lr", "prompts_per_step", "samples_per_prompt")}
COLD_START_KEYS = ("vlm", "generator", "train_images", "eval_images", "cold_start_epochs", "sft_lr", "train_vision", "autocast",
                   "seed")
"""What the cold start depends on (sft/cold_start/stage.json): not the second stage's own settings."""
DEFAULTS_BEFORE_RECORDED = {"cold_start_epochs": 0.0, "generator": None}
"""Settings added since stages were first recorded, and the value the stages saved before them ran with."""
SMALL_HEAD = HeatmapConfig(dim=64, heads=2, mlp_dim=128, conv_channels=(64, 32), up_channels=(32, 16, 8), mask_in_chans=8)


@dataclass
class JudgeBenchConfig:
    out: str = "runs/imagedoctor"
    """Run directory (sft/, ablation/, grpo/, result.json); finished stages are reused."""
    vlm: str = "reasonrl/demo/vlm"
    """The Qwen2.5-VL checkpoint the judge starts from."""
    generator: str | None = None
    """A SMARLI model directory: judge data in that generator's kind of image (export.py
    `DoctorDataConfig.generator`), for a judge that rewards it (dense.py); None: shapes-world renders."""
    train_images: int = 2000
    """Judge training images (SFT)."""
    eval_images: int = 150
    """Held-out images every model is measured on."""
    cold_start_epochs: float = 5.0
    """ImageDoctor's first SFT stage: passes over the training images with the four scores alone as the
    target (no thinking, no locations, no heatmap head), before the full SFT; 0: none (the single stage
    of the runs before 2026-12-07)."""
    sft_epochs: float = 2.5
    """SFT passes over the training images (the full look-think-predict text and the heatmaps)."""
    train_vision: bool = False
    """Train the vision tower and merger in SFT too (a departure: ImageDoctor keeps them frozen)."""
    sft_lr: float = 3e-3
    """SFT peak learning rate (the embedded VLM was trained at 3e-3)."""
    ablation_steps: int = 100
    """Steps of the two fresh heads of the ablation (batches of 16)."""
    grpo_steps: int = 30
    """GRPO steps after SFT."""
    grpo_lr: float = 2e-4
    """GRPO learning rate (constant)."""
    prompts_per_step: int = 8
    """GRPO images per step."""
    samples_per_prompt: int = 4
    """GRPO judgements per image (the group)."""
    stages: tuple[str, ...] = ("sft", "ablation", "grpo")
    """Stages to run, of sft, ablation and grpo (both start from sft's judge: run sft first, then
    the others, e.g. in two processes, then all together); finished ones are read back."""
    max_tokens: int = JUDGEMENT_TOKENS
    """Longest judgement generated; refused if shorter than the data's longest target."""
    autocast: Literal["bfloat16", "float16"] | None = None
    """SFT and GRPO compute dtype on CUDA under torch.autocast, over float32 weights; None: float32 throughout."""
    seed: int = 0
    """Data and initialisation."""


def bench_judge(cfg: JudgeBenchConfig, log=functools.partial(print, flush=True)) -> dict:
    out = Path(cfg.out)
    start = time.perf_counter()
    unknown = set(cfg.stages) - set(STAGE_KEYS)
    if unknown:
        raise ValueError(f"--stages: unknown {sorted(unknown)}; known: sft, ablation, grpo")
    if cfg.cold_start_epochs < 0:
        raise ValueError(f"--cold-start-epochs must be >= 0 (0: no cold start), got {cfg.cold_start_epochs}")
    names = [name for name in STAGE_KEYS if name in cfg.stages]  # sft first: the others start from its judge
    data = DoctorDataConfig(out=str(out), n=cfg.train_images, seed=cfg.seed, generator=cfg.generator)
    view = data.view()  # loaded once for both sets
    train_ex = judge_examples(data, view)
    eval_ex = judge_examples(DoctorDataConfig(out=str(out), n=cfg.eval_images, seed=cfg.seed, split="eval",
                                              generator=cfg.generator), view)
    _check_budget(cfg, train_ex + eval_ex)
    for name in names:  # every refusal before any work, and before anything is written
        _check_stage(out / name, stage_settings(cfg, name))
        if name == "sft" and cfg.cold_start_epochs > 0:
            _check_stage(out / "sft" / "cold_start", cold_start_settings(cfg))
        if name != "sft":
            _check_stage(out / "sft", stage_settings(cfg, "sft"))  # the model it starts from
            _check_sft_finished(out / "sft", name, names)
    out.mkdir(parents=True, exist_ok=True)
    result = {"config": asdict(cfg), "device": f"CPU, {torch.get_num_threads()} threads"}
    stages = {"sft": lambda: _sft(cfg, train_ex, eval_ex, out / "sft", log),
              "ablation": lambda: _ablation(cfg, train_ex, eval_ex, out, log),
              "grpo": lambda: _grpo(cfg, train_ex, eval_ex, out, log)}
    for name in names:
        result[name] = _stage(out / name, stage_settings(cfg, name), stages[name], log)
    result["seconds"] = time.perf_counter() - start
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def stage_settings(cfg: JudgeBenchConfig, name: str) -> dict:
    """What stage `name` depends on: SFT's settings, and its own."""
    keys = STAGE_KEYS["sft"] + (STAGE_KEYS[name] if name != "sft" else ())
    return json.loads(json.dumps({k: getattr(cfg, k) for k in keys}))  # tuples as JSON gives them back


def cold_start_settings(cfg: JudgeBenchConfig) -> dict:
    return {k: getattr(cfg, k) for k in COLD_START_KEYS}


def _check_stage(path: Path, settings: dict) -> None:
    """Refuse a stage (or SFT's cold start) that holds results (metrics.json, or a GRPO run to resume)
    made with other settings."""
    saved = path / "stage.json"
    if not saved.is_file() or not ((path / "metrics.json").is_file() or (path / "run").exists()):
        return
    changed = differences({**DEFAULTS_BEFORE_RECORDED, **json.loads(saved.read_text())}, settings)
    if changed:
        raise ValueError(settings_changed(f"{path} was made with other settings", changed,
                                          "rerun with the saved settings, or choose another --out (or delete that stage)"))


def _check_budget(cfg: JudgeBenchConfig, examples) -> None:
    """Refuse a --max-tokens that would cut a target judgement: one cut before </answer> parses to
    no scores, so even a perfect judge would measure low and GRPO would give its complete judgements 0."""
    longest = longest_target(examples, Tokenizer.from_dir(cfg.vlm))
    if longest > cfg.max_tokens:
        raise ValueError(f"--max-tokens {cfg.max_tokens} is shorter than the data's longest target judgement "
                         f"({longest} tokens, end of turn included): raise it to at least {longest}")


def _check_sft_finished(sft: Path, name: str, names: list[str]) -> None:
    """Refuse a stage that starts from SFT's judge unless SFT runs first here or has finished (its
    metrics.json is written after the model is saved: a model without it may be half-written)."""
    if "sft" not in names and not (sft / "metrics.json").is_file():
        raise ValueError(f"--stages {name} starts from the SFT judge, and {sft} holds no finished SFT stage "
                         f"(no metrics.json): run --stages sft first, or add sft to --stages")


def _stage(path: Path, settings: dict, run, log) -> dict:
    done = path / "metrics.json"
    if done.is_file():
        if not (path / "stage.json").is_file():
            log(f"imagedoctor: {path} records no settings (made before they were recorded); reusing it as it is")
        log(f"imagedoctor: reusing {done}")
        return json.loads(done.read_text())
    path.mkdir(parents=True, exist_ok=True)
    (path / "stage.json").write_text(json.dumps(settings, indent=2) + "\n")
    metrics = run()
    done.write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def _sft(cfg: JudgeBenchConfig, train_ex, eval_ex, save: Path, log) -> dict:
    from reasonrl.reward.imagedoctor.model import save_doctor

    doctor, tok = doctor_from_vlm(cfg.vlm, SMALL_HEAD, seed=cfg.seed)
    train, held = judge_items(train_ex, tok, doctor.backbone), judge_items(eval_ex, tok, doctor.backbone)
    first = {}
    if cfg.cold_start_epochs > 0:
        doctor, first = _cold_start(cfg, doctor, tok, train, held, save / "cold_start", log)
    t = time.perf_counter()
    sft = JudgeSFTConfig(epochs=cfg.sft_epochs, lr=cfg.sft_lr, autocast=cfg.autocast, seed=cfg.seed,
                         train_vision=cfg.train_vision)
    history = train_judge_sft(doctor, train, sft, tok.pad_token_id, log)
    metrics = {"train_seconds": time.perf_counter() - t, "final_ce": history[-1]["ce"],
               "final_heatmap_mse": history[-1]["heatmap_mse"], **judge_metrics(doctor, tok, held, cfg.max_tokens)}
    if first:
        metrics["cold_start"] = first
    save_doctor(doctor, save / "model", tok)
    log(f"imagedoctor sft: {metrics}")
    return metrics


def _cold_start(cfg: JudgeBenchConfig, doctor, tok, train_items, held_items, save: Path, log):
    """ImageDoctor's first stage (scores alone, cross-entropy only) on the SFT items' prompts, saved to
    and read back from `save`: (the judge after it, its held-out score correlations)."""
    from reasonrl.models.loader import MASTER_DTYPE
    from reasonrl.reward.imagedoctor.model import load_doctor, save_doctor

    done = save / "metrics.json"
    if done.is_file():  # its settings were checked (bench_judge) before any work
        log(f"imagedoctor: reusing the cold start in {save}")
        return load_doctor(save / "model", dtype=MASTER_DTYPE), json.loads(done.read_text())
    save.mkdir(parents=True, exist_ok=True)
    (save / "stage.json").write_text(json.dumps(cold_start_settings(cfg), indent=2) + "\n")
    train, held = cold_start_items(train_items, tok), cold_start_items(held_items, tok)
    t = time.perf_counter()
    stage = JudgeSFTConfig(epochs=cfg.cold_start_epochs, lr=cfg.sft_lr, autocast=cfg.autocast, seed=cfg.seed,
                           heatmap=False, train_vision=cfg.train_vision)
    history = train_judge_sft(doctor, train, stage, tok.pad_token_id, log)
    metrics = {"train_seconds": time.perf_counter() - t, "final_ce": history[-1]["ce"],
               **judge_metrics(doctor, tok, held, cfg.max_tokens, maps=False)}
    del metrics["well_formed"]  # a scores-only text is never well-formed; parsed/* says whether it was read
    save_doctor(doctor, save / "model", tok)
    done.write_text(json.dumps(metrics, indent=2) + "\n")  # after the model: a model without it may be half-written
    log(f"imagedoctor cold start: {metrics}")
    return doctor, metrics


def _ablation(cfg: JudgeBenchConfig, train_ex, eval_ex, out: Path, log) -> dict:
    from reasonrl.models.loader import MASTER_DTYPE
    from reasonrl.reward.imagedoctor.ablation import head_ablation
    from reasonrl.reward.imagedoctor.model import load_doctor

    judge, tok = load_doctor(out / "sft" / "model", dtype=MASTER_DTYPE), Tokenizer.from_dir(out / "sft" / "model")
    subset = train_ex[:8 * cfg.ablation_steps]  # each seen about twice: less memory than all of them
    train, held = judge_items(subset, tok, judge.backbone), judge_items(eval_ex, tok, judge.backbone)
    result = head_ablation(judge, tok, train, held, cfg.ablation_steps, lr=cfg.sft_lr, seed=cfg.seed,
                           max_tokens=cfg.max_tokens, log=log)
    log(f"imagedoctor ablation: {result}")
    return result


def _grpo(cfg: JudgeBenchConfig, train_ex, eval_ex, out: Path, log) -> dict:
    from reasonrl.models.loader import MASTER_DTYPE
    from reasonrl.reward.imagedoctor.env import JudgeEnvironment
    from reasonrl.reward.imagedoctor.model import load_doctor, save_doctor
    from reasonrl.rl.config import from_dict
    from reasonrl.rl.run import open_run
    from reasonrl.rl.trainer import Trainer
    from reasonrl.stop import StopSignal

    doctor, tok = load_doctor(out / "sft" / "model", dtype=MASTER_DTYPE), Tokenizer.from_dir(out / "sft" / "model")
    train, held = judge_items(train_ex, tok, doctor.backbone), judge_items(eval_ex, tok, doctor.backbone)
    env = JudgeEnvironment(doctor, tok, train, held)
    prompt_tokens = max(len(it.prompt.input_ids) for it in train + held)
    recipe = grpo_recipe(cfg, out / "sft" / "model", out / "grpo" / "run", prompt_tokens)
    open_run(recipe["train"]["run_dir"], recipe, console=False)  # a run made with another recipe is refused
    trainer = Trainer(from_dict(recipe), env, doctor.backbone, tok, console=False)
    with StopSignal("the current GRPO step") as stop:
        try:
            trainer.train(stop)  # resumes from grpo/run's latest checkpoint
        finally:
            trainer.close()
    if stop:
        print(f"imagedoctor: GRPO stopped at step {trainer.step} of {cfg.grpo_steps}, checkpoint saved in "
              f"{out / 'grpo' / 'run'}; rerun the same command to resume", file=sys.stderr, flush=True)
        raise SystemExit(stop.exit_code)
    history = read_metrics(out / "grpo" / "run")  # (a line cut by a kill is dropped)
    rewards = [h["reward_mean"] for h in history if "reward_mean" in h]
    # every step's time, the steps of a run stopped and resumed included (not just this process's)
    seconds = sum(h["step_seconds"] for h in history if isinstance(h.get("step_seconds"), (int, float)))
    metrics = {"train_seconds": seconds, "reward_first": rewards[0] if rewards else None,
               "reward_last": rewards[-1] if rewards else None, "rewards": rewards,
               "well_formed_last": next((h["well_formed"] for h in reversed(history) if "well_formed" in h), None),
               **judge_metrics(doctor, tok, held, cfg.max_tokens)}
    save_doctor(doctor, out / "grpo" / "model", tok)
    log(f"imagedoctor grpo: {metrics}")
    return metrics


def grpo_recipe(cfg: JudgeBenchConfig, model: Path, run_dir: Path, prompt_tokens: int) -> dict:
    """The GRPO stage's recipe; its engine holds the longest prompt (`prompt_tokens`) plus a whole judgement."""
    return {"model": {"path": str(model), "freeze_vision": True, "autocast": cfg.autocast},
            "env": {"name": "imagedoctor", "eval_size": 8},
            "rollout": {"prompts_per_step": cfg.prompts_per_step, "samples_per_prompt": cfg.samples_per_prompt,
                        "max_tokens": cfg.max_tokens, "temperature": 1.0},
            "engine": {"max_num_seqs": 64, "kv_cache_memory": "256MiB",
                       "max_model_len": prompt_tokens + cfg.max_tokens},
            "loss": {"name": "grpo"},
            "optim": {"lr": cfg.grpo_lr, "schedule": "constant", "grad_clip": 1.0, "max_tokens_per_microbatch": 8192},
            "train": {"steps": cfg.grpo_steps, "seed": cfg.seed, "run_dir": str(run_dir), "save_every": 5,
                      "keep_checkpoints": 1, "eval_every": 0}}


def format_rows(result: dict) -> str:
    """A markdown table of the measured models."""
    keys = ["plcc/alignment", "srcc/alignment", "plcc/plausibility", "plcc/aesthetics", "plcc/overall", "plcc/mean",
            "srcc/mean", "plcc_expected/alignment", "plcc_expected/mean", "cc/misalignment", "iou/misalignment", "cc/artifact", "iou/artifact", "well_formed"]
    lines = ["| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    rows = [("sft, cold start only (scores)", result.get("sft", {}).get("cold_start")),
            ("sft", result.get("sft")), ("grpo", result.get("grpo"))]
    for name, row in rows:
        if row:
            lines.append(f"| {name} | " + " | ".join(f"{row[k]:.3f}" if k in row else "-" for k in keys) + " |")
    if "ablation" in result:
        maps = ["cc/misalignment", "iou/misalignment", "cc/artifact", "iou/artifact"]
        lines += ["", f"ablation, heads only on the frozen SFT judge ({result['ablation']['steps']} steps each):", "",
                  "| head | " + " | ".join(maps) + " |", "|---" * (len(maps) + 1) + "|"]
        for name in ("judge_head", "task_tokens", "no_task_tokens"):
            lines.append(f"| {name} | " + " | ".join(f"{result['ablation'][name][k]:.3f}" for k in maps) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from reasonrl.cli.flags import add_flags, values

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_flags(parser, JudgeBenchConfig)
    result = bench_judge(JudgeBenchConfig(**values(parser.parse_args(argv), JudgeBenchConfig)))
    print(format_rows(result))


if __name__ == "__main__":
    main()
