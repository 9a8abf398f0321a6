"""Step labels: Monte Carlo estimation, weak/strong consistency, and their accuracy.

Papers:
- Math-Shepherd (arXiv 2312.08935): a completer continues N times from the prefix through each
  step; the soft label is the fraction of continuations that reach the gold answer, the hard label
  is 1 if any does.
- Athena-PRM (arXiv 2506.09532): MC labels are noisy (a weak completer fails from correct steps,
  a strong one recovers from wrong ones), so label with a weak and a strong completer and keep
  only the steps on which their labels agree.

Where this departs from them:
- Agreement is on hard labels, per step: a step whose labels disagree is left out of the loss
  (`None`), the other steps of its solution still train. The paper's exact completers, N and
  hard/soft threshold are not public; our completers are policies trained here.
- Every step is completed, the last one too (the continuation of a finished solution is usually
  just the end-of-sequence token, and its reward is then the solution's own).
- Each continuation's outcome is stored, so one labelling run with N per completer gives the
  labels of any smaller N (the first n), and single-completer and consistency labels at an equal
  budget (n + n consistent against 2n from one completer) come from the same samples.
- A step prefix that leaves the completer no room to continue (a solution cut at the context
  limit, max_model_len) is not completed: its outcome list is empty and the step has no label.

A labelled solution is one JSONL row:
    {"id", "prompt": [messages], "answer", "metadata", "response", "steps": [texts], "final": extracted answer,
     "outcome": 0/1, "exact": [0/1 per step] or null, "mc": {"weak": [[0/1 per continuation] per step], "strong": ...}}
(a step's continuation list is empty when its prefix left the completer no room: it has no label)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

from reasonrl.config import positive_ints, to_dict
from reasonrl.engine.sampling_params import stable_seed
from reasonrl.envs.base import Environment, Prompt
from reasonrl.reward.prm.completer import Completer, Cost, Request
from reasonrl.reward.prm.steps import StepFormat, split_steps

Source = Literal["exact", "outcome", "weak", "strong", "consistent"]
SOURCES = ("exact", "outcome", "weak", "strong", "consistent")


def sample_solutions(completer: Completer, env: Environment, prompts: Sequence[Prompt], samples: int, fmt: StepFormat,
                     seed: int = 0, distinct: bool = True) -> tuple[list[dict[str, Any]], Cost]:
    """`samples` solutions per prompt from the completer (duplicates of a prompt's solution dropped
    when `distinct`; kept for best-of-N pools, where votes count them), as rows with their steps, outcome and, when the environment knows them, exact step labels."""
    requests = [Request(p, seed=stable_seed(seed, p.id, "solution")) for p in prompts]
    cost = completer.run(requests, n=samples)
    rows = []
    for r in requests:
        pairs = list(zip(r.texts, r.ended))
        if distinct:  # a duplicate solution once, where it first came
            first: dict[str, bool] = {}
            for text, ended in pairs:
                first.setdefault(text, ended)
            pairs = list(first.items())
        for j, (text, ended) in enumerate(pairs):
            rows.append(solution_row(env, r.prompt, text, fmt, f"{r.prompt.id}/{j}", ended))
    return rows, cost


def solution_row(env: Environment, prompt: Prompt, response: str, fmt: StepFormat, row_id: str,
                 ended: bool = True) -> dict[str, Any]:
    """`ended`: the response ended on its own, not cut at max_tokens (then its last step is a fragment)."""
    steps = [s.text for s in split_steps(response, fmt)]
    exact = env.step_labels(prompt, steps) if hasattr(env, "step_labels") else None
    return {"id": row_id, "prompt": prompt.messages, "answer": prompt.answer, "metadata": prompt.metadata,
            "response": response, "steps": steps, "final": env.extract(prompt, response),
            "outcome": env.reward(prompt, response), "exact": exact, "ended": ended, "step_format": to_dict(fmt),
            "mc": {}}


def monte_carlo(completer: Completer, env: Environment, rows: list[dict[str, Any]], fmt: StepFormat, role: str,
                seed: int = 0) -> Cost:
    """Continue every step prefix of every row `completer.n` times; row["mc"][role] gets, per
    step, whether each continuation reached the gold answer (1/0)."""
    requests, owners = [], []
    for i, row in enumerate(rows):
        prompt = as_prompt(row)
        for k, step in enumerate(split_steps(row["response"], fmt)):
            requests.append(Request(prompt, row["response"][:step.end], stable_seed(seed, row["id"], k, role)))
            owners.append(i)
    cost = completer.run(requests)
    for row in rows:
        row["mc"][role] = []
    for r, i in zip(requests, owners):
        rewards = env.rewards([r.prompt] * len(r.texts), [r.prefix + t for t in r.texts])
        rows[i]["mc"][role].append([int(x >= 1.0) for x in rewards])
    return cost


def as_prompt(row: dict[str, Any]) -> Prompt:
    return Prompt(id=row["id"], messages=row["prompt"], answer=row["answer"], metadata=row.get("metadata") or {})


# ---- from stored outcomes to labels ---------------------------------------------------------------
def mc_labels(outcomes: list[list[int]], n: int | None = None, hard: bool = True) -> list[float | None]:
    """Per step: 1.0 if any of the first n continuations succeeded (hard), else their success rate;
    None for a step with no continuation (its prefix left the completer no room)."""
    out = []
    for bits in outcomes:
        bits = bits[:n] if n else bits
        out.append(None if not bits else float(any(bits)) if hard else sum(bits) / len(bits))
    return out


def labels_of(row: dict[str, Any], source: Source, n: int | None = None, hard: bool = True) -> list[float | None]:
    """The training targets of a row's steps; None where the source gives no label (a step the
    completers disagree on or did not continue, or every step but the last for outcome labels)."""
    k = len(row["steps"])
    if source == "exact":
        return [float(x) for x in row["exact"]]
    if source == "outcome":
        return [None] * (k - 1) + [float(row["outcome"] >= 1.0)] if k else []
    if source in ("weak", "strong"):
        return mc_labels(row["mc"][source], n, hard)
    weak, strong = mc_labels(row["mc"]["weak"], n, True), mc_labels(row["mc"]["strong"], n, True)
    return [w if w == s else None for w, s in zip(weak, strong)]


def label_problem(row: dict[str, Any], source: Source, n: int | None = None) -> str | None:
    """What keeps a row from giving `source` labels (None: nothing): exact labels must be there, and
    Monte Carlo ones (weak, strong, consistent: both) one list of 0/1 outcomes per step, each at
    least `n` long when labels from the first n continuations are asked for."""
    if source == "exact" and row.get("exact") is None:
        return "no exact step labels (exact is missing or null)"
    roles = {"weak": ["weak"], "strong": ["strong"], "consistent": ["weak", "strong"]}.get(source, [])
    mc = row.get("mc")
    for role in roles:
        outcomes = mc.get(role) if isinstance(mc, dict) else None
        if outcomes is None:
            return f"no {role} completer outcomes (mc.{role}), which --labels {source} needs; label with --{role}"
        if (not isinstance(outcomes, list) or len(outcomes) != len(row["steps"])
                or not all(isinstance(b, list) and all(x in (0, 1) for x in b) for b in outcomes)):
            return f"mc.{role} must be one list of 0/1 outcomes per step ({len(row['steps'])} steps)"
        short = [len(b) for b in outcomes if 0 < len(b) < (n or 0)]  # none at all: a step never continued
        if short:
            return f"mc.{role} holds {min(short)} continuations of a step, fewer than the {n} completions asked for"
    return None


def label_quality(rows: Sequence[dict[str, Any]], source: Source, n: int | None = None) -> dict[str, float]:
    """Hard labels of `source` against the exact step labels: accuracy over the steps it labels,
    the share of steps it labels (retention), and, among labelled steps, the share of truly wrong
    steps labelled right (false positive rate) and of right steps labelled wrong (false negative)."""
    right = kept = total = fp = fn = pos = neg = 0
    for row in rows:
        for label, exact in zip(labels_of(row, source, n, hard=True), row["exact"]):
            total += 1
            if label is None:
                continue
            kept, pos, neg = kept + 1, pos + (exact == 1), neg + (exact == 0)
            right += int(label == exact)
            fp += int(label == 1 and exact == 0)
            fn += int(label == 0 and exact == 1)
    return {"accuracy": right / max(kept, 1), "retention": kept / max(total, 1), "steps": total, "labelled": kept,
            "false_positive_rate": fp / max(neg, 1), "false_negative_rate": fn / max(pos, 1)}


# ---- the labelling job (`reasonrl prm label`) ------------------------------------------------------
@dataclass
class LabelJob:
    policy: str
    """Checkpoint that writes the solutions to label (e.g. reasonrl/demo/policy)."""
    out: str
    """JSONL of labelled solutions; OUT.cost.json (completions and tokens per completer) and
    OUT.quality.json (label accuracy against exact step labels, when the environment has them) beside it."""
    env: str = "sums:"
    """Environment spec: its problems, its reward (did a continuation reach the answer), its exact step labels."""
    weak: str | None = None
    """The weak completer's checkpoint (e.g. a less trained policy). With neither completer, only the
    solutions, their outcomes and exact labels are written (held-out sets, best-of-N pools)."""
    strong: str | None = None
    """The strong completer's checkpoint (e.g. the policy after RL)."""
    problems: int = 200
    """Problems to draw solutions for."""
    samples_per_problem: int = 4
    """Solutions sampled per problem."""
    distinct: bool = True
    """Keep a problem's duplicate solutions once (false keeps every sample: best-of-N pools)."""
    completions: int = 8
    """Continuations per step prefix, per completer (labels for any smaller n come from the same run)."""
    temperature: float = 1.0
    """Sampling temperature of solutions and continuations."""
    max_tokens: int = 128
    """Tokens per solution or continuation."""
    data_split: str = "train"
    """Which problems: train | eval (generated environments)."""
    data_seed: int = 0
    """Which problems."""
    seed: int = 0
    """Seeds every solution and continuation."""
    device: str | None = None
    """cpu, cuda or cuda:N (default: cuda when available)."""

    def __post_init__(self):
        positive_ints(self, ("problems", "samples_per_problem", "completions", "max_tokens"), "")


def run_label_job(job: LabelJob, fmt: StepFormat, engine_kwargs: dict | None = None, log=print) -> dict[str, Any]:
    """Sample solutions, label them with each completer given, write the rows, costs and label quality."""
    from reasonrl.envs.registry import load_environment

    env, options = load_environment(job.env), dict(engine_kwargs or {})
    sampling = dict(temperature=job.temperature, max_tokens=job.max_tokens, device=job.device, **options)
    prompts = env.prompts(job.problems, seed=job.data_seed, split=job.data_split)
    rows, costs = _solutions(job, env, prompts, fmt, sampling)
    cut = [r for r in rows if not r["ended"]] if job.weak or job.strong else []
    if cut:  # a cut solution's last step is a fragment, which a completer would go on from as if it were a step
        rows = [r for r in rows if r["ended"]]
        log(f"{len(cut)} solutions cut at max_tokens ({job.max_tokens}) left out of labelling")
    log(f"{len(rows)} solutions of {len(prompts)} problems, {sum(len(r['steps']) for r in rows)} steps"
        + _no_room(costs["solutions"], "prompts", "no solutions"))
    for role in ("weak", "strong"):
        path = getattr(job, role)
        if path is not None:
            costs[role] = monte_carlo(Completer.load(path, job.completions, **sampling), env, rows, fmt, role, job.seed)
            log(f"{role} completer: {costs[role].completions} continuations, {costs[role].generated_tokens} tokens, "
                f"{costs[role].seconds:.0f}s" + _no_room(costs[role], "step prefixes", "left unlabelled"))
    out = Path(job.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    Path(f"{out}.cost.json").write_text(json.dumps({k: to_dict(v) for k, v in costs.items()}, indent=2) + "\n")
    quality = quality_table(rows, job.completions) if all(r["exact"] is not None for r in rows) else {}
    Path(f"{out}.quality.json").write_text(json.dumps(quality, indent=2) + "\n")
    return {"rows": len(rows), "cut": len(cut), "costs": {k: to_dict(v) for k, v in costs.items()}, "quality": quality}


def _solutions(job: LabelJob, env, prompts, fmt, sampling) -> tuple[list[dict[str, Any]], dict[str, Cost]]:
    writer = Completer.load(job.policy, job.samples_per_problem, **sampling)
    rows, cost = sample_solutions(writer, env, prompts, job.samples_per_problem, fmt, job.seed, job.distinct)
    del writer  # its KV cache goes before the completers allocate theirs
    return rows, {"solutions": cost}


def _no_room(cost: Cost, what: str, so: str) -> str:
    return f"; {cost.no_room} {what} fill max_model_len: {so}" if cost.no_room else ""


def quality_table(rows: Sequence[dict[str, Any]], n: int) -> dict[str, dict[str, float]]:
    """Label quality of every MC source the rows hold, at n continuations per completer and at an
    equal budget: consistency with n/2 + n/2 against one completer with n."""
    roles = [r for r in ("weak", "strong") if rows and r in rows[0]["mc"]]
    out = {f"{r}@{n}": label_quality(rows, r, n) for r in roles}
    out.update({f"{r}@{n // 2}": label_quality(rows, r, n // 2) for r in roles if n >= 2})
    if len(roles) == 2:
        out[f"consistent@{n}+{n}"] = label_quality(rows, "consistent", n)
        if n >= 2:
            out[f"consistent@{n // 2}+{n // 2}"] = label_quality(rows, "consistent", n // 2)
    return out
