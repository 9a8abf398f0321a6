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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch

from reasonrl.config import positive_ints, to_dict
from reasonrl.engine.llm_engine import LLMEngine
from reasonrl.engine.sampling_params import stable_seed
from reasonrl.envs.base import Environment, Prompt
from reasonrl.models import load_model
from reasonrl.models.loader import has_weights, save_model
from reasonrl.models.tokenizer import Tokenizer
from reasonrl.reward.prm.completer import Completer, Request
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
        positive_ints(self, ("rounds", "prompts_per_round", "samples_per_prompt", "keep_per_prompt", "max_tokens"), "")


Scorer = Callable[[Sequence[Prompt], Sequence[str]], list[float]]


def reward_fn(cfg: RaftConfig, env: Environment) -> Scorer:
    if cfg.reward == "outcome":
        return env.rewards
    from reasonrl.reward.prm.model import load_prm
    from reasonrl.reward.prm.scoring import PRMScorer, aggregate

    scorer = PRMScorer(*load_prm(cfg.prm, device=cfg.device))

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


def environments(cfg: RaftConfig) -> tuple[Environment, Environment]:
    """The training environment and the one that measures (the same one without eval_env)."""
    from reasonrl.envs.registry import load_environment

    env = load_environment(cfg.env)
    if cfg.eval_env is None:
        return env, env
    judge = load_environment(cfg.eval_env)
    if type(judge) is not type(env):  # its verifier would read the kept samples' prompts as its own
        raise ValueError(f"--eval-env {cfg.eval_env!r} is another environment than --env {cfg.env!r}: it judges the "
                         "kept training samples, so it must be the same environment with other options")
    return env, judge


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
    env, judge = environments(cfg)  # settings that can be refused are, before --overwrite deletes a run
    if cfg.reward != "outcome":
        from reasonrl.reward.prm.model import PRMConfig
        from reasonrl.reward.prm.scoring import check_aggregations

        check_aggregations([cfg.aggregation])
        PRMConfig.from_dir(cfg.prm)  # (a directory that holds no PRM)
    config = {"raft": to_dict(cfg)}
    out = open_run(cfg.out, config, overwrite=control.overwrite, accept_changes=control.accept_changes,
                   free_keys=set(), console=False, inputs=(cfg.policy, cfg.prm), save=False)
    latest = latest_checkpoint(out)
    if checkpoint_step(latest) >= cfg.rounds:
        say(f"{out}: this run is finished (round {checkpoint_step(latest)} of {cfg.rounds}); nothing to do. For more "
            "rounds, raise --rounds and add --accept-changes; to start over, add --overwrite.")
        history = load_trainer_state(latest)["raft"]
        _write_metrics(out, history)  # killed between the last checkpoint and its metrics: the checkpoint's
        if not has_weights(out):  # stopped after its last checkpoint, before the policy (its weights go in last)
            save_model(load_model(latest, device=cfg.device, dtype=torch.float32), out, Tokenizer.from_dir(latest),
                       atomic=True)
        return history
    # a resumed run starts from its last round's policy, read once
    model = load_model(latest or cfg.policy, device=cfg.device, dtype=torch.float32)
    tokenizer = Tokenizer.from_dir(cfg.policy)
    score, held_out = reward_fn(cfg, env), judge.prompts(cfg.eval_problems, seed=cfg.seed, split="eval")
    save_config(out, config, free_keys=set())  # only now: a rerun refused on the way leaves the run as it was
    if latest is not None:
        history = load_trainer_state(latest)["raft"]
        _write_metrics(out, history)  # as the checkpoint has them (a kill may have come between the two)
        say(f"resuming after round {len(history) - 1} ({latest})")
    else:
        history = [{"round": 0, "samples": 0, "accuracy": held_out_accuracy(model, tokenizer, judge, held_out, cfg.max_tokens)}]
        log(json.dumps(history[-1]))
        _write_metrics(out, history)
    try:
        while len(history) <= cfg.rounds and not stop:
            rnd = len(history)
            history.append(raft_round(cfg, env, judge, model, tokenizer, score, rnd, history[-1]["samples"]))
            history[-1]["accuracy"] = held_out_accuracy(model, tokenizer, judge, held_out, cfg.max_tokens)
            log(json.dumps(history[-1]))
            save_checkpoint(out, rnd, model, tokenizer, {"raft": history}, keep=1)
            _write_metrics(out, history)
    except KeyboardInterrupt:  # (a second Ctrl-C: now, mid-round)
        saved = checkpoint_step(latest_checkpoint(out))
        raise KeyboardInterrupt(f"the policy after round {saved} is saved in {out}: rerun the same command to go on "
                                "from there" if saved else "nothing was saved: a rerun starts from round 0") from None
    if len(history) <= cfg.rounds:
        say(f"stopped after round {len(history) - 1} of {cfg.rounds}; checkpoint: {latest_checkpoint(out)}\n"
            "resume with the same command")
        return history
    save_model(model, out, tokenizer, atomic=True)  # a kill mid-save leaves no weights file: the rerun saves again
    return history


def _write_metrics(out: Path, history: list[dict[str, Any]]) -> None:
    tmp = out / "metrics.jsonl.tmp"
    tmp.write_text("".join(json.dumps(h) + "\n" for h in history))
    tmp.replace(out / "metrics.jsonl")  # a kill mid-write leaves the last whole file


def raft_round(cfg: RaftConfig, env: Environment, judge: Environment, model, tokenizer, score: Scorer, rnd: int,
               samples: int) -> dict[str, Any]:
    """Sample, rank, keep, fine-tune in place; what happened (`kept_correct`: the share of kept samples
    the evaluation verifier, `judge`, accepts)."""
    start = time.perf_counter()
    prompts = env.prompts(cfg.prompts_per_round, seed=cfg.seed * 1000 + rnd, split="train")
    requests = sample(model, tokenizer, prompts, cfg.samples_per_prompt, cfg.temperature, cfg.max_tokens, (cfg.seed, rnd))
    rewards = score([r.prompt for r in requests for _ in r.texts], [t for r in requests for t in r.texts])
    kept = select(requests, rewards, cfg.keep_per_prompt, cfg.min_reward)
    if kept:
        data = [sft_example(p.messages, r, tokenizer) for p, r in kept]
        train_sft(model, data, SFTConfig(epochs=cfg.epochs, lr=cfg.lr, samples_per_step=16, seed=cfg.seed + rnd))
    else:  # (a PRM whose scores all sit below the bar kept nothing, round after round, and said nothing)
        finite = [r for r in rewards if math.isfinite(r)]
        say(f"round {rnd}: no sample reached --min-reward {cfg.min_reward} (the best scored "
            f"{max(finite, default=math.nan):.3g}), so the policy was not fine-tuned this round")
    truth = judge.rewards([p for p, _ in kept], [r for _, r in kept]) if kept else []
    correct = judge.metrics([p for p, _ in kept], [r for _, r in kept], truth)["accuracy"] if kept else 0.0
    return {"round": rnd, "samples": samples + len(rewards), "kept": len(kept),
            "kept_correct": correct, "seconds": time.perf_counter() - start}
