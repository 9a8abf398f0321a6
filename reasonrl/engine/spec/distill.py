"""Online-logit distillation of a draft head (SpecVLM §3.5, arXiv 2509.11815; EAGLE's recipe).

Nothing is stored ahead: each step the target generates responses to a batch of prompts with the
engine, then one teacher forward over prompt + response gives its features f and logits z, and
the draft learns, row by row,

    L = 0.1 * CE(softmax(z_{j+1}), draft_logits_j) + 1.0 * SmoothL1(draft_out_j, f_{j+1})

from inputs (x_{j+1}, f_j + noise). Only the draft trains; the target is frozen and shared with
the generating engine. Every `eval_every` steps the draft decodes held-out prompts greedily inside
the engine and the average accepted length (tokens per verification) is logged.

Departures: EAGLE trains offline on a fixed corpus regenerated once by the target; SpecVLM on
instruction data with the teacher recomputed each step. Here the responses themselves are also
generated on the fly by the target (sampled at `temperature`), so the draft sees the target's own
distribution. Feature noise is uniform in [-noise, noise] as in EAGLE (0.1 here, EAGLE 0.2 of
unnormalised features).
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from reasonrl.config import finite_numbers, positive_ints
from reasonrl.engine.config import EngineConfig
from reasonrl.engine.llm_engine import LLMEngine
from reasonrl.engine.sampling_params import SamplingParams, stable_seed
from reasonrl.engine.spec.draft import (CONFIG_FILE, WEIGHTS_FILE, DraftHead, DraftInfo, attention_layout, fingerprint,
                                        read_info)
from reasonrl.eval.store import read_rows
from reasonrl.models.chat import ChatEncoder
from reasonrl.models.model import CausalAttention, DecoderLM
from reasonrl.models.qwen2_5_vl.prompt import MultimodalPrompt
from reasonrl.models.tokenizer import Tokenizer
from reasonrl.vision.spec.compressor import BRANCHES, CompressorConfig

LOG_FILE = "distill_log.jsonl"
DRAFT_FILES = (CONFIG_FILE, WEIGHTS_FILE, LOG_FILE, "accepted_length.md", "accepted_length.png")  # what --out holds


@dataclass
class DistillJob:
    target: str = field(metadata={"positional": True})
    """Target checkpoint directory (the policy the draft speeds up)."""
    out: str
    """Where the draft goes: draft_config.json, draft.safetensors, distill_log.jsonl (saved at every evaluation)."""
    env: str = "sums:"
    """Environment whose prompts the target answers (e.g. math:FILE.jsonl)."""
    num_prompts: int = 2048
    """Training prompts drawn from the environment's train split."""
    eval_prompts: int = 32
    """Held-out prompts (the environment's eval split) for the accepted-length checks."""
    init: str | None = None
    """A draft checkpoint to continue from (--out itself, to continue the draft there)."""
    overwrite: bool = False
    """Replace the draft --out holds with one trained from step 0 (without it, a draft there is
    only continued, with --init OUT)."""
    device: str | None = None
    """cpu, cuda or cuda:N (default: cuda when available)."""
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    """The target's dtype, and so the draft's (default float32 on every device: the draft trains in it, and
    bfloat16 weights lose AdamW's small steps; a draft loads into an engine in that engine's dtype)."""
    compressor: Literal["none", "select", "weighted", "concat"] = "none"
    """Vision-language target: give the draft SpecVLM's elastic visual compressor in this mode
    (none: EagleVLM, every visual token). Ignored with --init (the draft keeps its own)."""
    compressor_branches: tuple[str, ...] = BRANCHES
    """The compressor's branches (prune pool conv resampler text_only)."""
    compressor_ratio: int = 3
    """The compressor's ratio for prune, pool and conv."""


@dataclass
class DistillConfig:
    steps: int = 400
    """Training steps (one batch of fresh target responses each)."""
    prompts_per_step: int = 16
    """Prompts the target answers per step."""
    max_new_tokens: int = 96
    """Length of the target's training responses."""
    temperature: float = 1.0
    """Sampling temperature of the target's training responses."""
    lr: float = 1e-3
    """AdamW learning rate of the draft."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Clip the gradient's global norm."""
    logit_weight: float = 0.1
    """Weight of the cross-entropy to the target's next-token distribution."""
    feature_weight: float = 1.0
    """Weight of the Smooth L1 to the target's next feature."""
    feature_noise: float = 0.1
    """Uniform noise in [-x, x] added to the input features (EAGLE)."""
    gate_weight: float = 1.0
    """SpecVLM select mode: weight of the gate's own supervision (the branch whose loss, charged
    for its draft visual FLOPs, is lowest; distill_vlm.py); 0: the Gumbel-softmax alone, as in the paper."""
    gate_cost: float = 0.05
    """The charge: a branch's loss counts (1 + gate_cost x its draft visual FLOPs / those of every
    visual row), so a branch that keeps every row must save 5 percent of the loss to beat text-only."""
    eval_every: int = 100
    """Steps between held-out accepted-length checks (the draft is saved at each)."""
    epochs: int | None = None
    """Train this many passes over the training prompts instead of `steps`, with a held-out check
    after each (an accepted-length-per-epoch table and PNG are written next to the draft)."""
    seed: int = 0
    """Seeds the prompts, the responses and the noise."""

    def __post_init__(self):
        positive_ints(self, ("steps", "prompts_per_step", "max_new_tokens", "eval_every")
                      + (("epochs",) if self.epochs is not None else ()), "distill: ")
        # (a negative weight trained the draft away from the target, and saved it)
        finite_numbers(self, above={"lr": 0, "grad_clip": 0},
                       at_least=dict.fromkeys(("temperature", "weight_decay", "logit_weight", "feature_weight",
                                               "feature_noise", "gate_weight", "gate_cost"), 0), prefix="distill: ")
        if self.logit_weight == self.feature_weight == 0:
            raise ValueError("distill: logit_weight and feature_weight are both 0: nothing to learn")


def distillation_loss(draft: DraftHead, ids: torch.Tensor, lengths: torch.Tensor, cfg: DistillConfig,
                      generator: torch.Generator | None = None,
                      prompts: list[MultimodalPrompt | None] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """ids (B, T) right-padded sequences of `lengths` tokens -> the loss of the module docstring.
    `prompts`: the rows' prompts with images (a vision-language target; distill_vlm.py)."""
    if prompts is not None and any(p is not None for p in prompts):
        from reasonrl.engine.spec.distill_vlm import vlm_distillation_loss

        return vlm_distillation_loss(draft, ids, lengths, cfg, generator, prompts)
    target = draft.target
    b, t = ids.shape
    with torch.no_grad():
        feats = target.forward_padded(ids)  # (B, T, h)
        teacher = target.compute_logits(feats[:, 1:]).float().softmax(-1)  # (B, T-1, V): predicts x_{j+2}
    inputs = feats[:, :-1]
    if cfg.feature_noise:
        noise = torch.rand(inputs.shape, generator=generator, device="cpu").to(inputs.device, inputs.dtype)
        inputs = inputs + (2 * noise - 1) * cfg.feature_noise
    positions = torch.arange(1, t, device=ids.device).repeat(b)
    out = draft(ids[:, 1:].reshape(-1), inputs.reshape(b * (t - 1), -1), positions, CausalAttention(b, t - 1))
    out = out.view(b, t - 1, -1)
    valid = torch.arange(1, t, device=ids.device)[None, :] < lengths[:, None]  # row j needs position j + 1
    logp = draft.logits(out).float().log_softmax(-1)
    ce = -(teacher * logp).sum(-1)[valid].mean()
    l1 = F.smooth_l1_loss(out[valid].float(), feats[:, 1:][valid].float())
    top1 = (logp.argmax(-1) == teacher.argmax(-1))[valid].float().mean()
    loss = cfg.logit_weight * ce + cfg.feature_weight * l1
    return loss, {"ce": ce.item(), "smooth_l1": l1.item(), "top1": top1.item()}


def generate(engine: LLMEngine, prompts: list[list[int] | MultimodalPrompt], params: SamplingParams) -> list[list[int]]:
    """prompt + response token ids of every prompt, in order."""
    for i, p in enumerate(prompts):
        engine.add_request(f"d{i}", p, params)
    done = engine.drain()
    return [done[f"d{i}"].prompt_ids + done[f"d{i}"].outputs[0].token_ids for i in range(len(prompts))]


def accepted_length(engine: LLMEngine, prompts: list[list[int]], max_new_tokens: int) -> float:
    """Average tokens per verification when `engine` (which has the draft) decodes greedily."""
    spec = engine.speculator
    rounds, emitted = spec.rounds, spec.emitted
    generate(engine, prompts, SamplingParams(temperature=0, max_tokens=max_new_tokens))
    return (spec.emitted - emitted) / max(spec.rounds - rounds, 1)


def distill_draft(target: DecoderLM, prompts: list[list[int]], eval_prompts: list[list[int]], cfg: DistillConfig,
                  draft: DraftHead | None = None, engine_options: dict | None = None, log=None,
                  on_eval=None, first_step: int = 0, first_epoch: int = 0) -> tuple[DraftHead, list[dict]]:
    """Train a draft for `target`; returns it and the log (one dict per logged step).
    `on_eval(draft, history)` runs after every evaluation (e.g. to save, so a killed run keeps it).
    `first_step`, `first_epoch`: a draft trained that far already (--init): steps and epochs are
    numbered on from there, and the prompts, responses and noise are drawn afresh (seeded by the
    seed and `first_step`), not those of its first steps again; AdamW starts afresh."""
    if not prompts:
        raise ValueError("distill: no training prompts")
    steps_per_epoch = None
    if cfg.epochs:  # an epoch: one pass over the prompts; evaluated after each
        steps_per_epoch = -(-len(prompts) // cfg.prompts_per_step)
        cfg = replace(cfg, steps=cfg.epochs * steps_per_epoch, eval_every=steps_per_epoch)
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    seed = cfg.seed if not first_step else stable_seed(cfg.seed, first_step, bits=31)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    draft = draft or DraftHead(target)
    target.requires_grad_(False)
    longest = max(len(p.input_ids if isinstance(p, MultimodalPrompt) else p) for p in prompts + eval_prompts)
    options = {"max_model_len": longest + cfg.max_new_tokens + 1, **(engine_options or {})}
    generator_engine = LLMEngine(target, None, EngineConfig.from_kwargs(**options))
    # the draft's accepted length is measured with the full tree every step, not what this machine's load makes worthwhile
    eval_options = {"draft_adaptive": False, **options}
    eval_engine = LLMEngine(target, None, EngineConfig.from_kwargs(**eval_options), draft=draft) if eval_prompts else None
    opt = torch.optim.AdamW(draft.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    params = SamplingParams(temperature=cfg.temperature, max_tokens=cfg.max_new_tokens)
    noise = torch.Generator().manual_seed(seed)
    history, start = [], time.perf_counter()
    for done in range(1, cfg.steps + 1):
        step = first_step + done
        chosen = rng.sample(prompts, min(cfg.prompts_per_step, len(prompts)))
        batch = generate(generator_engine, chosen, replace(params, seed=rng.randrange(1 << 31)))
        ids, lengths = _pad(batch, target.device)
        draft.train()
        mm = [p if isinstance(p, MultimodalPrompt) else None for p in chosen]
        loss, parts = distillation_loss(draft, ids, lengths, cfg, noise, mm)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(draft.parameters(), cfg.grad_clip)
        opt.step()
        if done % cfg.eval_every == 0 or done == cfg.steps:
            draft.eval()
            row = {"step": step, "loss": loss.item(), **parts, "seconds": round(time.perf_counter() - start, 1)}
            if steps_per_epoch:
                row["epoch"] = first_epoch + done // steps_per_epoch
            if eval_engine is not None:
                with torch.no_grad():
                    row["accepted_length"] = accepted_length(eval_engine, eval_prompts, cfg.max_new_tokens)
            history.append(row)
            log("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
            if on_eval is not None:
                on_eval(draft, history)
    draft.eval()
    return draft, history


def run_distill(job: DistillJob, cfg: DistillConfig) -> Path:
    """`reasonrl distill-draft`: prompts from the job's environment, rendered with the target's chat
    template; the draft and its log (`distill_log.jsonl`) are saved to `job.out` at every evaluation.
    Interrupted (KeyboardInterrupt), it says where the last saved draft is and the command that
    trains the rest."""
    from reasonrl.envs.registry import load_environment
    from reasonrl.models.loader import MASTER_DTYPE, load_model

    out = Path(job.out)
    continues = _check_out(out, job)
    env = load_environment(job.env if ":" in job.env else job.env + ":")
    target_path, init = job.target, job.init
    target = load_model(target_path, job.device, job.dtype or MASTER_DTYPE)
    tok = Tokenizer.from_dir(target_path)
    encoder = ChatEncoder(tok, target)  # images for a vision-language target; refused by a text-only one
    encode = lambda prompts: [encoder(p.messages) for p in prompts]  # noqa: E731
    train = encode(env.prompts(n=job.num_prompts, seed=cfg.seed, split="train"))
    held = encode(env.prompts(n=job.eval_prompts, seed=cfg.seed, split="eval")) if job.eval_prompts else []
    compressor = None
    if job.compressor != "none":
        compressor = CompressorConfig(mode=job.compressor, branches=job.compressor_branches, ratio=job.compressor_ratio)
    draft = DraftHead.load(init, target) if init else DraftHead(target, compressor)
    steps_before = read_info(init).steps if init else 0
    before = _earlier_log(init, steps_before) if init else []  # the log goes on from the draft's own
    first_epoch = max((r["epoch"] for r in before if "epoch" in r), default=0)
    saved = [steps_before, first_epoch] if continues else []  # the step and epoch of the draft in `out`

    def save(draft: DraftHead, history: list[dict]) -> None:
        info = DraftInfo(target.config.architecture, target.config.vocab_size, target.config.hidden_size,
                         fingerprint(target), str(target_path), history[-1]["step"], history[-1].get("accepted_length"),
                         asdict(draft.compressor.config) if draft.compressor is not None else None,
                         attention_layout(target.config))
        draft.save(out, info)
        saved[:] = [history[-1]["step"], history[-1].get("epoch")]
        log = out / (LOG_FILE + ".tmp")
        log.write_text("".join(json.dumps(row) + "\n" for row in before + history))
        log.replace(out / LOG_FILE)  # a kill mid-write leaves the last whole log
        if cfg.epochs:
            write_epoch_report(out, before + history)

    if job.overwrite:
        for name in DRAFT_FILES:
            (out / name).unlink(missing_ok=True)
    try:
        distill_draft(target, train, held, cfg, draft, on_eval=save, first_step=steps_before,  # the last step is
                      first_epoch=first_epoch)  # always evaluated
    except KeyboardInterrupt:
        raise _interrupted(job, cfg, saved, steps_before, first_epoch) from None
    return out


class DistillInterrupted(KeyboardInterrupt):
    """Ctrl-C during `run_distill`. Its message says what --out holds; `rest`, where some of the job
    is left, is the job and config that train the rest from that draft (the CLI prints it as a command)."""

    def __init__(self, message: str, rest: tuple[DistillJob, DistillConfig] | None = None):
        super().__init__(message)
        self.rest = rest


def _check_out(out: Path, job: DistillJob) -> bool:
    """Refuse an --out the draft may not go to (before anything loads); whether it is --init's draft,
    continued. A draft already there is continued (--init OUT) or replaced (--overwrite), never
    silently retrained from step 0 over a run's saved progress."""
    if out.exists() and not (out.is_dir() and ((out / CONFIG_FILE).is_file() or all(
            p.name.removesuffix(".tmp") in DRAFT_FILES for p in out.iterdir()))):
        raise ValueError(f"--out {out} exists and is not a draft directory: the draft would be written into it "
                         "(or fail to be, after training); choose a new path")
    continues = job.init is not None and Path(job.init).resolve() == out.resolve()
    if continues and job.overwrite:
        raise ValueError(f"--overwrite would delete the draft --init {job.init} continues from: give one of them")
    if (out / CONFIG_FILE).is_file() and not continues and not job.overwrite:
        raise ValueError(f"--out {out} holds a draft ({read_info(out).steps} steps): continue it with --init {job.out} "
                         "(it trains --steps steps more), or add --overwrite to train one afresh in its place")
    return continues


def _interrupted(job: DistillJob, cfg: DistillConfig, saved: list, steps_before: int,
                 first_epoch: int) -> DistillInterrupted:
    """What an interrupt leaves: the draft last saved to --out and the job that trains the rest of it.
    `saved`: its [step, epoch], empty when nothing is there."""
    if not saved:
        every = "epoch" if cfg.epochs else f"{cfg.eval_every} steps"
        return DistillInterrupted(f"nothing was saved (the draft is saved at every evaluation, every {every})")
    step, epoch = saved
    left = cfg.epochs - (epoch - first_epoch) if cfg.epochs else cfg.steps - (step - steps_before)
    if left < 1:
        return DistillInterrupted(f"the draft of step {step}, the last, is saved in {job.out}")
    rest = replace(cfg, **{"epochs" if cfg.epochs else "steps": left})
    return DistillInterrupted(f"the draft of step {step} is saved in {job.out}",
                              (replace(job, init=job.out, overwrite=False), rest))


def _earlier_log(init: str | Path, steps: int) -> list[dict]:
    """The rows of `init`'s distill_log.jsonl up to its saved step (none when it has no log). A
    draft continued with --init before its log was kept numbered that log from 1 (a log ending at
    300 of 600 steps): its rows are moved to end at the draft's step count."""
    rows = read_rows(Path(init) / LOG_FILE, lambda r: isinstance(r.get("step"), int), "a log row", cut=False)
    rows = [r for r in rows if r["step"] <= steps]  # (a damaged line is skipped with a warning, as in every log)
    shift = steps - rows[-1]["step"] if rows else 0
    return [{**r, "step": r["step"] + shift} for r in rows]


def write_epoch_report(out: Path, history: list[dict]) -> None:
    """accepted_length.md (a table) and accepted_length.png: held-out accepted length per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in history if "epoch" in r and "accepted_length" in r]
    lines = ["| epoch | accepted length | loss | top-1 |", "|---|---|---|---|"]
    lines += [f"| {r['epoch']} | {r['accepted_length']:.3f} | {r['loss']:.4f} | {r['top1']:.3f} |" for r in rows]
    (out / "accepted_length.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r["epoch"] for r in rows], [r["accepted_length"] for r in rows], marker="o")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accepted length (held-out, greedy)")
    ax.set_title("Draft accepted length per epoch")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "accepted_length.png", dpi=120)
    plt.close(fig)


def _pad(seqs: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    t = max(map(len, seqs))
    ids = torch.zeros(len(seqs), t, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
    return ids.to(device), torch.tensor([len(s) for s in seqs], device=device)
