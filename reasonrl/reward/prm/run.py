"""`reasonrl prm train | judge | best-of-n`: a PRM from labelled solutions, its step judgement, its best-of-N.

    reasonrl prm label --policy reasonrl/demo/policy --weak W --strong S --out runs/prm/labels.jsonl
    reasonrl prm train --data runs/prm/labels.jsonl --eval-data runs/prm/heldout.jsonl --out runs/prm/model
    reasonrl prm judge --prm runs/prm/model --data runs/prm/heldout.jsonl
    reasonrl prm best-of-n --pool runs/prm/pool.jsonl --prm runs/prm/model --out runs/prm/bon.json

Labelled solutions are the JSONL rows of `labels.py`; the held-out set needs exact step labels.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from reasonrl.config import to_dict
from reasonrl.models import load_model
from reasonrl.models.tokenizer import Tokenizer
from reasonrl.reward.prm.judge import processbench
from reasonrl.reward.prm.labels import Source, label_problem
from reasonrl.reward.prm.model import CONFIG_FILE, PRMConfig, from_backbone, load_prm, save_prm
from reasonrl.reward.prm.best_of_n import Candidate, curves, rules
from reasonrl.reward.prm.scoring import PRMScorer, StepScores, aggregate, check_aggregations, prompt_problem
from reasonrl.reward.prm.steps import StepFormat, split_steps
from reasonrl.reward.prm.train import PRMTrainConfig, train_prm
from reasonrl.rl.run import open_run, save_config
from reasonrl.rl.train import RunControl


@dataclass
class PRMTrainJob:
    data: str
    """JSONL of labelled solutions (`reasonrl prm label`)."""
    out: str
    """Directory of the trained PRM (a Hugging Face checkpoint plus prm_config.json), train.json (its
    metrics) and config.yaml (the settings: a rerun with others is refused without --overwrite)."""
    base: str = "reasonrl/demo/policy"
    """Checkpoint whose architecture and weights the PRM starts from (usually the policy)."""
    eval_data: str | None = None
    """JSONL of held-out solutions with exact step labels: ProcessBench metrics after training."""
    threshold: float = 0.5
    """A step scoring under this is judged wrong (ProcessBench's first wrong step)."""
    device: str | None = None
    """cpu, cuda or cuda:N (default: cuda when available)."""


@dataclass
class JudgeJob:
    prm: str
    """A PRM directory."""
    data: str
    """JSONL of solutions with exact step labels."""
    threshold: float = 0.5
    """A step scoring under this is judged wrong."""
    device: str | None = None
    """cpu, cuda or cuda:N (default: cuda when available)."""


def read_rows(path: str | Path, need: Sequence[str] = (), labels: Source | None = None,
              completions: int | None = None) -> list[dict[str, Any]]:
    """Labelled solutions, each checked: a JSON object with `prompt`, `steps` (strings), `outcome` (a
    number) and the fields in `need`; `exact` step labels, where given, 0 or 1 per step; what
    `labels` needs from the first `completions` continuations (labels.py `label_problem`). A bad row
    is a ValueError naming the file, the line and the field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labelled solutions {path} do not exist")
    rows = []
    for i, line in enumerate(path.read_bytes().split(b"\n")):  # not splitlines(): JSON strings may hold U+2028
        if line.strip():
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                row = None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{i + 1}: not a JSON object")
            problem = _row_problem(row, need) or (label_problem(row, labels, completions) if labels else None)
            if problem:
                raise ValueError(f"{path}:{i + 1}: {problem}")
            rows.append(row)
    return rows


LEGACY_STEP_FORMAT = StepFormat(delimiter=" ")
"""How `prm label` cut steps before it recorded the format in its rows (2026-12-06): at a space."""


def recorded_step_format(path: str | Path) -> StepFormat:
    """The step format `prm label` cut the rows of `path` with (recorded in each row), or
    LEGACY_STEP_FORMAT for rows that record none; the rows are checked against it before training."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labelled solutions {path} do not exist")
    with path.open("rb") as f:
        first = next((line for line in f if line.strip()), b"")
    try:
        recorded = json.loads(first).get("step_format")
        return StepFormat(**recorded) if recorded is not None else LEGACY_STEP_FORMAT
    except (ValueError, TypeError, AttributeError) as exc:  # not JSON, not an object, unknown or bad fields
        raise ValueError(f"{path}:1: step_format must be a step format as `prm label` records it ({exc})") from None


def _row_problem(row: dict[str, Any], need: Sequence[str]) -> str | None:
    missing = {"prompt", "steps", "outcome", *need} - set(row)
    if missing:
        return f"missing {', '.join(sorted(missing))}"
    steps, exact = row["steps"], row.get("exact")
    if (shape := prompt_problem(row["prompt"])) is not None:
        return shape
    if not isinstance(steps, list) or not all(isinstance(x, str) for x in steps):
        return "steps must be a list of strings"
    if row.get("final") is not None and not isinstance(row["final"], str):
        return f"final must be the extracted answer as a string or null, got {row['final']!r}"
    if isinstance(row["outcome"], bool) or not isinstance(row["outcome"], (int, float)):
        return f"outcome must be a number, got {row['outcome']!r}"
    if exact is not None and (not isinstance(exact, list) or len(exact) != len(steps) or any(x not in (0, 1) for x in exact)):
        return f"exact must be one 0 or 1 per step ({len(steps)} steps), got {exact!r}"
    return None


def new_prm(base: str, cfg: PRMConfig, device=None, seed: int = 0) -> PRMScorer:
    """A PRM on the base checkpoint's weights with a fresh head, trained in fp32."""
    backbone = load_model(base, device=device, dtype=torch.float32)
    tokenizer = Tokenizer.from_dir(base)
    return PRMScorer(from_backbone(backbone, tokenizer, cfg, seed), tokenizer)


def judge(scorer: PRMScorer, rows: Sequence[dict[str, Any]], threshold: float = 0.5) -> dict[str, Any]:
    """ProcessBench metrics of the PRM's step scores on rows with exact step labels. A solution
    longer than the PRM's max_len (it did not read every step) is left out and counted in `unread`:
    its unread steps have no score, and taking their placeholder 0.0 for "wrong" would misjudge it."""
    rows = [r for r in rows if r.get("exact") is not None and r["steps"]]
    if not rows:
        raise ValueError("no solution with exact step labels to judge against")
    scored = scorer.score_steps([(r["prompt"], r["steps"]) for r in rows])
    read = [(s.scores, r["exact"]) for s, r in zip(scored, rows) if s.seen == len(r["steps"])]
    if not read:
        raise ValueError(f"none of the {len(rows)} solutions fits the PRM's max_len ({scorer.cfg.max_len} tokens)")
    return {**processbench(*zip(*read), threshold), "unread": len(rows) - len(read)}


def check_step_format(path, rows: list[dict], fmt: StepFormat) -> None:
    """A ValueError where `fmt` does not cut the rows' responses into the steps they were labelled
    with: the PRM saves `fmt`, and every later use of it (eval --prm, serve --prm, raft, a process
    reward) cuts responses with it, so it would score other steps than it was trained on."""
    for n, row in enumerate(rows, 1):
        cut = [s.text for s in split_steps(row["response"], fmt)] if isinstance(row.get("response"), str) else None
        if cut is not None and cut != row["steps"]:
            got = len(cut)
            raise ValueError(f"{path}: row {n}'s response cuts into {got} steps with this step format "
                             f"({to_dict(fmt)}), not the {len(row['steps'])} it was labelled with: give the step "
                             "format `prm label` used (--split, --delimiter; for sums, --delimiter ' ')")


def run_train(job: PRMTrainJob, prm_cfg: PRMConfig, cfg: PRMTrainConfig, log=print,
              control: RunControl = RunControl()) -> dict[str, Any]:
    """Train a PRM into `job.out` under `reasonrl train`'s rules for a run directory (rl/run.py): a
    new or empty directory, or this command's own output (its config.yaml), never the base model
    or the data; other settings than that output's are refused unless `control.overwrite`. Done
    already (train.json), it is not trained again."""
    rows = read_rows(job.data, labels=cfg.labels, completions=cfg.completions)
    held_out = read_rows(job.eval_data, labels="exact") if job.eval_data else None
    check_step_format(job.data, rows, prm_cfg.steps)
    config, work = {"job": to_dict(job), "model": to_dict(prm_cfg), "train": to_dict(cfg)}, ("train.json", CONFIG_FILE)
    out = open_run(job.out, config, overwrite=control.overwrite, free_keys=set(), console=False, work=work,
                   inputs=(job.base, job.data, job.eval_data), resumes=False, save=False)
    if (out / "train.json").is_file():
        log(f"{out}: this PRM is trained already; nothing to do (add --overwrite to train it afresh)")
        return json.loads((out / "train.json").read_text())
    scorer = new_prm(job.base, prm_cfg, job.device, cfg.seed)
    try:
        history = train_prm(scorer, rows, cfg, log)
    except KeyboardInterrupt:
        raise KeyboardInterrupt("nothing was saved (a PRM is saved when trained): rerun the same command to train "
                                "it afresh") from None
    # only now: nothing is written before the trained PRM, and a rerun refused on the way (a base that does not
    # load, data with no label the PRM sees) leaves the run as it was
    save_config(out, config, set(), work)
    save_prm(scorer.prm, out, scorer.tokenizer)
    result = {"job": to_dict(job), "train": to_dict(cfg), "examples": history["examples"],
              "final_loss": history["loss"][-1]}
    if held_out is not None:
        result["eval"] = judge(scorer, held_out, job.threshold)
        log(f"held-out: {json.dumps(result['eval'])}")
    (out / "train.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def run_judge(job: JudgeJob) -> dict[str, float]:
    prm, tokenizer = load_prm(job.prm, device=job.device)
    return judge(PRMScorer(prm, tokenizer), read_rows(job.data, labels="exact"), job.threshold)


@dataclass
class BestOfNJob:
    pool: str
    """JSONL of M sampled solutions per problem (`reasonrl prm label --no-distinct --samples-per-problem M`)."""
    prm: str
    """The PRM directory that scores every step."""
    out: str
    """JSON file of the curves ({rule: {N: accuracy, low, high}})."""
    orm: str | None = None
    """An outcome reward model (a PRM directory trained with --labels outcome): its last step's score ranks."""
    ns: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    """Values of N (each at most M)."""
    vote_by: str = "min"
    """Aggregation whose scores weight the PRM-weighted vote."""
    trials: int = 200
    """Bootstrap trials (problems resampled, N of M candidates drawn)."""
    seed: int = 0
    """Seeds the bootstrap."""
    device: str | None = None
    """cpu, cuda or cuda:N (default: cuda when available)."""


def candidates(rows: Sequence[dict[str, Any]], prm: str, orm: str | None,
               device=None) -> tuple[list[list[Candidate]], dict[str, int]]:
    """Rows grouped by problem as candidates, scored by the PRM (and the ORM) on the steps it read,
    and how many solutions each reward model did not read to the end ({"prm": k, "orm": k})."""
    scored = {"prm": _step_scores(prm, rows, device)}
    if orm:
        scored["orm"] = _step_scores(orm, rows, device)
    pools: dict[str, list[Candidate]] = {}
    for i, row in enumerate(rows):
        outcome = aggregate(scored["orm"][i].read, "last") if orm else None
        c = Candidate(row.get("final"), row["outcome"] >= 1.0, scored["prm"][i].read, outcome)
        pools.setdefault(problem_of(row), []).append(c)
    return list(pools.values()), {name: sum(s.unread for s in out) for name, out in scored.items()}


def problem_of(row: dict[str, Any]) -> str:
    """A pool row's problem: its id up to the last '/' (`prm label` writes PROBLEM/0, PROBLEM/1, ...)."""
    return str(row["id"]).rsplit("/", 1)[0]


def check_pools(rows: Sequence[dict[str, Any]], n: int) -> None:
    """Every problem has at least n candidates (before any scoring)."""
    sizes = Counter(problem_of(r) for r in rows)
    if not sizes:
        raise ValueError("the pool holds no solutions")
    smallest = min(sizes, key=sizes.get)
    if sizes[smallest] < n:
        raise ValueError(f"every problem needs at least N={n} candidates, the smallest pool ({smallest!r}) has "
                         f"{sizes[smallest]}: a problem's pool is the rows whose ids share the part before the last "
                         f"'/' (PROBLEM/0, PROBLEM/1, ... as `prm label` writes them)")


def _step_scores(path: str, rows, device) -> list[StepScores]:
    model, tokenizer = load_prm(path, device=device)
    return PRMScorer(model, tokenizer).score_steps([(r["prompt"], r["steps"]) for r in rows])


def run_best_of_n(job: BestOfNJob, log=print) -> dict[str, Any]:
    """Best-of-N curves of the pool. Steps past a reward model's max_len are left out of its
    aggregates (not scored 0.0); the solutions that had some are counted in `unread`."""
    if not job.ns or any(not isinstance(n, int) or n < 1 for n in job.ns):
        raise ValueError(f"ns must be candidate counts >= 1, got {list(job.ns)}")
    if job.trials < 1:
        raise ValueError(f"trials must be >= 1 bootstrap trials, got {job.trials}")
    check_aggregations([job.vote_by])
    rows = read_rows(job.pool, need=("id",))
    check_pools(rows, max(job.ns))
    for path in (job.prm, job.orm):  # both reward models exist before either scores the pool
        if path is not None:
            PRMConfig.from_dir(path)
    pools, unread = candidates(rows, job.prm, job.orm, job.device)
    for name, k in unread.items():
        if k:
            log(f"{k} of {len(rows)} solutions go past the {name.upper()}'s max_len: ranked on the steps it read")
    result = curves(pools, job.ns, rules(job.vote_by, job.orm is not None), job.trials, job.seed)
    Path(job.out).parent.mkdir(parents=True, exist_ok=True)
    Path(job.out).write_text(json.dumps({"job": to_dict(job), "problems": len(pools), "unread": unread,
                                         "curves": result}, indent=2) + "\n")
    return result
