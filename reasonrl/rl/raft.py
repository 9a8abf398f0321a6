"""`reasonrl raft`: reward-ranked fine-tuning. Sample N per prompt, keep the top by reward, fine-tune, repeat.

Paper: RAFT (Dong et al., arXiv 2304.06767); Athena-PRM (arXiv 2506.09532) uses its PRM as RAFT's
reward. Each round samples `samples_per_prompt` responses to `prompts_per_round` new training
prompts with the current policy (our engine), ranks each prompt's responses by the reward, keeps
the best `keep_per_prompt` of those scoring at least `min_reward`, and runs SFT on them.

Where this departs from them:
- Rewards: `outcome` (the environment's verifier), `prm` (a PRM's aggregated step scores) or
  `outcome+prm` (the PRM ranks the samples the verifier accepts); the paper's reward models are
  not ours. The policy is fine-tuned in place round after round (no restart from the base
  model); each round gets a fresh engine, since the weights changed.
- Held-out accuracy (greedy, the environment's verifier) is measured before the first round and
  after every round, with the number of samples drawn so far, so runs compare at equal samples.
  `eval_env` measures it, and judges the kept samples, with another verifier than the one that
  ranks: train on a lenient outcome reward, measure against the exact one.
- `--out` is a run directory like `reasonrl train`'s: each round is checkpointed (policy and the
  metrics so far), and rerunning the same command goes on after the last saved round.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch

from reasonrl.config import finite_numbers, min_ints, positive_ints, to_dict
from reasonrl.engine.llm_engine import LLMEngine
from reasonrl.engine.sampling_params import stable_seed
from reasonrl.envs.base import Environment, Prompt
from reasonrl.models import load_model
from reasonrl.models.loader import CheckpointError, has_weights, publish_dir, save_model
from reasonrl.models.tokenizer import Tokenizer
from reasonrl.reward.prm.completer import Completer, Request
from reasonrl.reward.prm.model import save_prm
from reasonrl.rl.checkpoint import checkpoint_step, latest_checkpoint, load_trainer_state, save_checkpoint
from reasonrl.rl.run import open_run, save_config
from reasonrl.rl.sft import SFTConfig, sft_example, train_sft
from reasonrl.rl.train import RunControl, say


@dataclass
class RaftConfig:
    policy: str
    """Checkpoint to improve."""
    out: str
    """Run directory: config.yaml, metrics.jsonl (one line per round), checkpoints/ (the last round's,
    to resume from) and the final policy at its root."""
    env: str = "sums:"
    """Environment spec: training prompts, the outcome reward, held-out problems."""
    eval_env: str | None = None
    """Environment spec of the held-out problems and of the verifier that measures accuracy and judges
    the kept samples (default: env). The same environment as env, with other options (e.g.
    env "sums:?tolerance=2", eval_env "sums:")."""
    reward: Literal["outcome", "prm", "outcome+prm"] = "outcome"
    """What ranks the samples: the environment's verifier, a PRM's aggregated step scores, or both
    (outcome+prm: the PRM's score where the verifier accepts the answer; the rest are never kept)."""
    prm: str | None = None
    """reward=prm or outcome+prm: the PRM directory."""
    aggregation: str = "min"
    """reward=prm or outcome+prm: how step scores make a solution's score (min, mean, last, product)."""
    prm_refresh: int = 0
    """reward=prm or outcome+prm: each round, once its samples are ranked and kept, label this many of them,
    those the PRM ranked highest (each prompt's best first), step by step by weak/strong consistent Monte
    Carlo continuation, and fine-tune the PRM on every round's labels so far (reward/prm/refresh.py), so
    that it follows the policy's errors as the policy moves. 0: the PRM stays as given. The PRM is
    checkpointed with the policy and saved in OUT/prm at the end, its labels in OUT/refresh_labels.jsonl."""
    refresh_weak: str | None = None
    """prm_refresh: the weak completer's checkpoint (default: --policy, the policy before any round)."""
    refresh_strong: str | None = None
    """prm_refresh: the strong completer's checkpoint (default: the policy that wrote the round's samples)."""
    refresh_env: str | None = None
    """prm_refresh: the environment spec whose verifier judges the continuations (default: env); the same
    environment as env with other options, like eval_env."""
    refresh_labels: Literal["consistent", "exact"] = "consistent"
    """prm_refresh: consistent (the Monte Carlo labels above) or exact (the environment's exact step labels,
    no continuation: a ceiling to measure against, where the environment has them, e.g. sums)."""
    refresh_completions: int = 4
    """prm_refresh: continuations per step prefix, per completer."""
    refresh_epochs: float = 2.0
    """prm_refresh: passes over every round's labels so far, each round."""
    refresh_lr: float = 1e-3
    """prm_refresh: peak learning rate of the PRM's fine-tuning."""
    rounds: int = 3
    """Sample-rank-fine-tune rounds."""
    prompts_per_round: int = 64
    """New training prompts per round."""
    samples_per_prompt: int = 8
    """Responses sampled per prompt (the N of best-of-N)."""
    keep_per_prompt: int = 1
    """Best responses kept per prompt."""
    min_reward: float = 0.5
    """A response is kept only if its reward is at least this."""
    temperature: float = 1.0
    """Sampling temperature."""
    max_tokens: int = 128
    """Tokens per response."""
    lr: float = 3e-4
    """SFT peak learning rate."""
    epochs: float = 2.0
    """SFT passes over each round's kept responses."""
    eval_problems: int = 200
    """Held-out problems (eval split), answered greedily after every round."""
    seed: int = 0
    """Seeds prompts, sampling and SFT."""
    device: str | None = None
    """cpu, cuda or cuda:N (default: cuda when available)."""

    def __post_init__(self):
        if self.reward not in ("outcome", "prm", "outcome+prm"):
            raise ValueError(f"reward must be outcome, prm or outcome+prm, got {self.reward!r}")
        if self.reward != "outcome" and not self.prm:
            raise ValueError(f"reward={self.reward} needs --prm DIR")
        positive_ints(self, ("rounds", "prompts_per_round", "samples_per_prompt", "keep_per_prompt", "max_tokens",
                             "refresh_completions"), "")
        min_ints(self, {"prm_refresh": 0}, "")
        if self.prm_refresh and self.reward == "outcome":
            raise ValueError("prm_refresh fine-tunes the PRM that ranks the samples; reward=outcome has none "
                             "(use --reward prm or outcome+prm with --prm DIR)")
        finite_numbers(self, above={"refresh_epochs": 0, "refresh_lr": 0}, prefix="")
        if self.refresh_labels not in ("consistent", "exact"):
            raise ValueError(f"refresh_labels must be consistent or exact, got {self.refresh_labels!r}")
        unused = REFRESH_FIELDS if not self.prm_refresh else COMPLETER_FIELDS if self.refresh_labels == "exact" else ()
        for name in unused:
            if getattr(self, name) != RaftConfig.__dataclass_fields__[name].default:
                why = "with --refresh-labels exact (no completer)" if self.prm_refresh else "without --prm-refresh N"
                raise ValueError(f"--{name.replace('_', '-')} does nothing {why}")


COMPLETER_FIELDS = ("refresh_weak", "refresh_strong", "refresh_completions")
REFRESH_FIELDS = ("refresh_env", "refresh_labels", *COMPLETER_FIELDS, "refresh_epochs", "refresh_lr")
"""The settings of prm_refresh, refused without it (they would be ignored)."""

Scorer = Callable[[Sequence[Prompt], Sequence[str]], list[float]]


def load_scorer(cfg: RaftConfig, checkpoint: Path | None = None):
    """The PRM that ranks (None for reward=outcome): the one a checkpoint holds, refreshed by the rounds
    before it (prm_refresh), or else --prm."""
    if cfg.reward == "outcome":
        return None
    from reasonrl.reward.prm.model import load_prm
    from reasonrl.reward.prm.scoring import PRMScorer

    saved = checkpoint / PRM_DIR if checkpoint is not None and cfg.prm_refresh else None
    if saved is not None and not saved.is_dir():
        raise CheckpointError(f"{checkpoint} holds no refreshed PRM ({PRM_DIR}/), which a run with --prm-refresh "
                              "saves with every round: delete the checkpoint and rerun to start afresh")
    # a PRM that trains does so in float32, as `prm train` does (else an accelerator loads its checkpoint's dtype)
    return PRMScorer(*load_prm(saved or cfg.prm, device=cfg.device, dtype=torch.float32 if cfg.prm_refresh else None))


PRM_DIR = "prm"
"""Where a checkpoint of a run with prm_refresh, and the finished run, keep the refreshed PRM."""


def reward_fn(cfg: RaftConfig, env: Environment, scorer=None) -> Scorer:
    """The ranking reward; `scorer` (`load_scorer`'s, read at every call: a refresh trains it in place)
    for reward=prm and outcome+prm."""
    if cfg.reward == "outcome":
        return env.rewards
    from reasonrl.reward.prm.scoring import aggregate

    scorer = scorer or load_scorer(cfg)

    def prm(prompts, responses):
        return [aggregate(s.read, cfg.aggregation) for s in  # (steps past max_len unread, not 0)
                scorer.score([(p.messages, r) for p, r in zip(prompts, responses)])]

    if cfg.reward == "prm":
        return prm

    def verified(prompts, responses):
        """The PRM's score of each response the verifier accepts (a reward above 0, which `metrics`
        counts as right); -inf, below any --min-reward, for the rest, which the PRM never reads."""
        accepted = [i for i, r in enumerate(env.rewards(prompts, responses)) if r > 0]
        out = [-math.inf] * len(responses)
        for i, score in zip(accepted, prm([prompts[i] for i in accepted], [responses[i] for i in accepted])):
            out[i] = score
        return out

    return verified


def environments(cfg: RaftConfig) -> tuple[Environment, Environment, Environment]:
    """The training environment, the one that measures (eval_env) and the one that judges the refresh's
    continuations (refresh_env); each defaults to the training one."""
    from reasonrl.envs.registry import load_environment

    env = load_environment(cfg.env)
    out = [env]
    for flag, spec, why in (("--eval-env", cfg.eval_env, "it judges the kept training samples"),
                            ("--refresh-env", cfg.refresh_env, "it judges continuations of the training samples")):
        other = env if spec is None else load_environment(spec)
        if type(other) is not type(env):  # its verifier would read the training prompts as its own
            raise ValueError(f"{flag} {spec!r} is another environment than --env {cfg.env!r}: {why}, so it must be "
                             "the same environment with other options")
        out.append(other)
    return out[0], out[1], out[2]


def check_refresh(cfg: RaftConfig, label_env: Environment) -> None:
    """What prm_refresh reads, checked before a round is spent: the completers' checkpoints, and exact step
    labels where they are asked for."""
    from reasonrl.models.loader import missing_checkpoint

    for flag, path in (("--refresh-weak", cfg.refresh_weak), ("--refresh-strong", cfg.refresh_strong)):
        if path is not None and not (Path(path) / "config.json").is_file():
            raise ValueError(f"{flag}: " + (missing_checkpoint(Path(path)) if not Path(path).is_dir() else
                                            f"{path} holds no config.json: it is not a model checkpoint"))
    if cfg.refresh_labels == "exact" and not hasattr(label_env, "step_labels"):
        raise ValueError(f"--refresh-labels exact: {type(label_env).__name__} (--refresh-env, default --env) has no "
                         "exact step labels; use consistent")


def refresher(cfg: RaftConfig, scorer, env: Environment, rows: list[dict[str, Any]]):
    """The PRM refresh of prm_refresh (None when off), going on from the labelled `rows` of the rounds before."""
    if not cfg.prm_refresh:
        return None
    from reasonrl.reward.prm.refresh import Refresh

    return Refresh(scorer, env, weak=cfg.refresh_weak or cfg.policy, strong=cfg.refresh_strong,
                   solutions=cfg.prm_refresh, labels=cfg.refresh_labels, completions=cfg.refresh_completions,
                   epochs=cfg.refresh_epochs, lr=cfg.refresh_lr, temperature=cfg.temperature,
                   max_tokens=cfg.max_tokens, device=cfg.device, seed=cfg.seed, rows=list(rows))


def sample(model, tokenizer, prompts: Sequence[Prompt], n: int, temperature: float, max_tokens: int, seed
           ) -> list[Request]:
    """n responses per prompt from the model as it is now (a fresh engine: the weights changed): each
    prompt's request, its `texts` and whether each `ended` on its own."""
    engine = LLMEngine(model, tokenizer)
    requests = [Request(p, seed=stable_seed(seed, p.id)) for p in prompts]
    Completer(engine, n, temperature, max_tokens).run(requests)
    return requests


def select(requests: Sequence[Request], rewards: list[float], keep: int, min_reward: float) -> list[tuple[Prompt, str]]:
    """The best `keep` responses of each prompt that reach `min_reward` (rewards flat, prompt-major).
    A response cut at max_tokens is never kept: fine-tuned with an end-of-sequence after it, it would
    teach the model to stop where the limit fell."""
    out, i = [], 0
    for r in requests:
        ranked = sorted(zip(rewards[i:i + len(r.texts)], range(len(r.texts))), key=lambda x: -x[0])
        out += [(r.prompt, r.texts[j]) for reward, j in ranked if reward >= min_reward and r.ended[j]][:keep]
        i += len(r.texts)
    return out


def held_out_accuracy(model, tokenizer, env: Environment, prompts: Sequence[Prompt], max_tokens: int) -> float:
    """Greedy accuracy as the environment defines it (`reasonrl train`'s eval_accuracy), not the mean reward."""
    responses = [r.texts[0] for r in sample(model, tokenizer, prompts, 1, 0.0, max_tokens, "eval")]
    return env.metrics(prompts, responses, env.rewards(prompts, responses))["accuracy"]


def run_raft(cfg: RaftConfig, control: RunControl = RunControl(), stop=None, log=print) -> list[dict[str, Any]]:
    """Every round's metrics (round 0: before the first) up to the last round, or the one `stop`
    (a StopSignal) ended. `cfg.out` is a run directory (rl/run.py: new, empty or this run's own;
    other settings refused unless `control` says so), each round is checkpointed there, and a rerun
    goes on after the last round saved: its seeds are the round's own, so it ends where an
    uninterrupted run does."""
    env, judge, label_env = environments(cfg)  # settings that can be refused are, before --overwrite deletes a run
    if cfg.reward != "outcome":
        from reasonrl.reward.prm.model import PRMConfig
        from reasonrl.reward.prm.scoring import check_aggregations

        check_aggregations([cfg.aggregation])
        PRMConfig.from_dir(cfg.prm)  # (a directory that holds no PRM)
    if cfg.prm_refresh:
        check_refresh(cfg, label_env)
    config = {"raft": to_dict(cfg)}
    out = open_run(cfg.out, config, overwrite=control.overwrite, accept_changes=control.accept_changes,
                   free_keys=set(), console=False, inputs=(cfg.policy, cfg.prm, cfg.refresh_weak, cfg.refresh_strong),
                   save=False)
    latest = latest_checkpoint(out)
    if checkpoint_step(latest) >= cfg.rounds:
        say(f"{out}: this run is finished (round {checkpoint_step(latest)} of {cfg.rounds}); nothing to do. For more "
            "rounds, raise --rounds and add --accept-changes; to start over, add --overwrite.")
        state = load_trainer_state(latest)
        _write_outputs(out, state)  # killed between the last checkpoint and its metrics: the checkpoint's
        if cfg.prm_refresh:  # (again: an OUT/prm of an earlier finish, or half replaced, is not the last round's)
            _publish_prm(latest, out / PRM_DIR)
        if not has_weights(out):  # stopped after its last checkpoint, before the policy (its weights go in last)
            save_model(load_model(latest, device=cfg.device, dtype=torch.float32), out, Tokenizer.from_dir(latest),
                       atomic=True)
        return state["raft"]
    # a resumed run starts from its last round's policy, read once
    model = load_model(latest or cfg.policy, device=cfg.device, dtype=torch.float32)
    tokenizer = Tokenizer.from_dir(cfg.policy)
    scorer = load_scorer(cfg, latest)
    score, held_out = reward_fn(cfg, env, scorer), judge.prompts(cfg.eval_problems, seed=cfg.seed, split="eval")
    save_config(out, config, free_keys=set())  # only now: a rerun refused on the way leaves the run as it was
    if latest is not None:
        state = load_trainer_state(latest)
        history = state["raft"]
        _write_outputs(out, state)  # as the checkpoint has them (a kill may have come between the two)
        say(f"resuming after round {len(history) - 1} ({latest})")
    else:
        history, state = [{"round": 0, "samples": 0, "accuracy": held_out_accuracy(model, tokenizer, judge, held_out,
                                                                                   cfg.max_tokens)}], {}
        log(json.dumps(history[-1]))
        _write_metrics(out, history)
    refresh = refresher(cfg, scorer, label_env, state.get("refresh_labels", []))
    extra = (lambda d: save_prm(scorer.prm, d / PRM_DIR, scorer.tokenizer)) if refresh else None  # (whole with it)
    try:
        while len(history) <= cfg.rounds and not stop:
            rnd = len(history)
            history.append(raft_round(cfg, env, judge, model, tokenizer, score, rnd, history[-1]["samples"],
                                      refresh=refresh))
            history[-1]["accuracy"] = held_out_accuracy(model, tokenizer, judge, held_out, cfg.max_tokens)
            log(json.dumps(history[-1]))
            state = {"raft": history, **({"refresh_labels": refresh.rows} if refresh else {})}
            save_checkpoint(out, rnd, model, tokenizer, state, keep=1, extra=extra)
            _write_outputs(out, state)
    except KeyboardInterrupt:  # (a second Ctrl-C: now, mid-round)
        saved = checkpoint_step(latest_checkpoint(out))
        raise KeyboardInterrupt(f"the policy after round {saved} is saved in {out}: rerun the same command to go on "
                                "from there" if saved else "nothing was saved: a rerun starts from round 0") from None
    if len(history) <= cfg.rounds:
        say(f"stopped after round {len(history) - 1} of {cfg.rounds}; checkpoint: {latest_checkpoint(out)}\n"
            "resume with the same command")
        return history
    if refresh:  # before the policy, whose weights say the run is finished
        _publish_prm(latest_checkpoint(out), out / PRM_DIR)
    save_model(model, out, tokenizer, atomic=True)  # a kill mid-save leaves no weights file: the rerun saves again
    return history


def _publish_prm(checkpoint: Path, path: Path) -> None:
    """A checkpoint's refreshed PRM copied to `path`, whole or not at all: copied beside it, then renamed in."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(checkpoint / PRM_DIR, tmp)
    shutil.rmtree(path, ignore_errors=True)
    publish_dir(tmp, path)


def _write_outputs(out: Path, state: dict[str, Any]) -> None:
    """metrics.jsonl and, with prm_refresh, refresh_labels.jsonl, as a checkpoint's state has them."""
    _write_metrics(out, state["raft"])
    if "refresh_labels" in state:
        _write_jsonl(out / "refresh_labels.jsonl", state["refresh_labels"])


def _write_metrics(out: Path, history: list[dict[str, Any]]) -> None:
    _write_jsonl(out / "metrics.jsonl", history)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(h) + "\n" for h in rows))
    tmp.replace(path)  # a kill mid-write leaves the last whole file


def raft_round(cfg: RaftConfig, env: Environment, judge: Environment, model, tokenizer, score: Scorer, rnd: int,
               samples: int, refresh=None) -> dict[str, Any]:
    """Sample, rank, keep; with `refresh` (a reward/prm/refresh.Refresh), label the samples the PRM ranked
    highest and fine-tune it; then fine-tune the policy in place on what was kept. What happened
    (`kept_correct`: the share of kept samples the evaluation verifier, `judge`, accepts)."""
    start = time.perf_counter()
    prompts = env.prompts(cfg.prompts_per_round, seed=cfg.seed * 1000 + rnd, split="train")
    requests = sample(model, tokenizer, prompts, cfg.samples_per_prompt, cfg.temperature, cfg.max_tokens, (cfg.seed, rnd))
    rewards = score([r.prompt for r in requests for _ in r.texts], [t for r in requests for t in r.texts])
    kept = select(requests, rewards, cfg.keep_per_prompt, cfg.min_reward)
    # the refresh labels with the policy that wrote the samples, which the fine-tuning below then changes;
    # the round's selection is made, so what the PRM learns here ranks the next round's samples, not these
    refreshed = refresh(requests, rewards, model, tokenizer, rnd) if refresh is not None else None
    if kept:
        data = [sft_example(p.messages, r, tokenizer) for p, r in kept]
        train_sft(model, data, SFTConfig(epochs=cfg.epochs, lr=cfg.lr, samples_per_step=16, seed=cfg.seed + rnd))
    else:  # (a PRM whose scores all sit below the bar kept nothing, round after round, and said nothing)
        finite = [r for r in rewards if math.isfinite(r)]
        say(f"round {rnd}: no sample reached --min-reward {cfg.min_reward} (the best scored "
            f"{max(finite, default=math.nan):.3g}), so the policy was not fine-tuned this round")
    truth = judge.rewards([p for p, _ in kept], [r for _, r in kept]) if kept else []
    correct = judge.metrics([p for p, _ in kept], [r for _, r in kept], truth)["accuracy"] if kept else 0.0
    row = {"round": rnd, "samples": samples + len(rewards), "kept": len(kept), "kept_correct": correct}
    return {**row, **({"refresh": refreshed} if refreshed is not None else {}), "seconds": time.perf_counter() - start}
