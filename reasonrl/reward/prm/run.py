"""`reasonrl prm train | judge | best-of-n`: a PRM from labelled solutions, its step judgement, its best-of-N.

    reasonrl prm label --policy reasonrl/demo/policy --weak W --strong S --out runs/prm/labels.jsonl
    reasonrl prm train --data runs/prm/labels.jsonl --eval-data runs/prm/heldout.jsonl --out runs/prm/model
    reasonrl prm judge --prm runs/prm/model --data runs/prm/heldout.jsonl
    reasonrl prm best-of-n --pool runs/prm/pool.jsonl --prm runs/prm/model --out runs/prm/bon.json

Labelled solutions are the JSONL rows of `labels.py`; the held-out set needs exact step labels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from reasonrl.config import to_dict
from reasonrl.models import load_model
from reasonrl.models.tokenizer import Tokenizer
from reasonrl.reward.prm.judge import processbench
from reasonrl.reward.prm.model import PRMConfig, from_backbone, load_prm, save_prm
from reasonrl.reward.prm.best_of_n import Candidate, curves, rules
from reasonrl.reward.prm.scoring import PRMScorer, aggregate, check_aggregations
from reasonrl.reward.prm.train import PRMTrainConfig, train_prm


@dataclass
class PRMTrainJob:
    data: str
    """JSONL of labelled solutions (`reasonrl prm label`)."""
    out: str
    """Directory of the trained PRM (a Hugging Face checkpoint plus prm_config.json); eval.json beside it."""
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


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labelled solutions {path} do not exist")
    rows = []
    for i, line in enumerate(path.read_text().splitlines()):
        if line.strip():
            try:
                row = json.loads(line)
                missing = {"prompt", "steps", "outcome"} - set(row)
            except (json.JSONDecodeError, TypeError):
                raise ValueError(f"{path}:{i + 1}: not a JSON object") from None
            if missing:
                raise ValueError(f"{path}:{i + 1}: missing {', '.join(sorted(missing))}")
            rows.append(row)
    return rows


def new_prm(base: str, cfg: PRMConfig, device=None, seed: int = 0) -> PRMScorer:
    """A PRM on the base checkpoint's weights with a fresh head, trained in fp32."""
    backbone = load_model(base, device=device, dtype=torch.float32)
    tokenizer = Tokenizer.from_dir(base)
    return PRMScorer(from_backbone(backbone, tokenizer, cfg, seed), tokenizer)


def judge(scorer: PRMScorer, rows: Sequence[dict[str, Any]], threshold: float = 0.5) -> dict[str, float]:
    """ProcessBench metrics of the PRM's step scores on rows with exact step labels."""
    rows = [r for r in rows if r.get("exact") is not None and r["steps"]]
    if not rows:
        raise ValueError("no solution with exact step labels to judge against")
    scores = [s.scores for s in scorer.score_steps([(r["prompt"], r["steps"]) for r in rows])]
    return processbench(scores, [r["exact"] for r in rows], threshold)


def run_train(job: PRMTrainJob, prm_cfg: PRMConfig, cfg: PRMTrainConfig, log=print) -> dict[str, Any]:
    rows = read_rows(job.data)
    held_out = read_rows(job.eval_data) if job.eval_data else None
    scorer = new_prm(job.base, prm_cfg, job.device, cfg.seed)
    history = train_prm(scorer, rows, cfg, log)
    out = save_prm(scorer.prm, job.out, scorer.tokenizer)
    result = {"job": to_dict(job), "train": to_dict(cfg), "examples": history["examples"],
              "final_loss": history["loss"][-1]}
    if held_out is not None:
        result["eval"] = judge(scorer, held_out, job.threshold)
        log(f"held-out: {json.dumps(result['eval'])}")
    (out / "train.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def run_judge(job: JudgeJob) -> dict[str, float]:
    prm, tokenizer = load_prm(job.prm, device=job.device)
    return judge(PRMScorer(prm, tokenizer), read_rows(job.data), job.threshold)


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


def candidates(rows: Sequence[dict[str, Any]], prm: str, orm: str | None, device=None) -> list[list[Candidate]]:
    """Rows grouped by problem as candidates, scored by the PRM (and the ORM)."""
    scored = {"prm": _step_scores(prm, rows, device)}
    if orm:
        scored["orm"] = [aggregate(s, "last") for s in _step_scores(orm, rows, device)]
    pools: dict[str, list[Candidate]] = {}
    for i, row in enumerate(rows):
        c = Candidate(row.get("final"), row["outcome"] >= 1.0, scored["prm"][i], scored["orm"][i] if orm else None)
        pools.setdefault(row["id"].rsplit("/", 1)[0], []).append(c)
    return list(pools.values())


def _step_scores(path: str, rows, device) -> list[list[float]]:
    model, tokenizer = load_prm(path, device=device)
    return [s.scores for s in PRMScorer(model, tokenizer).score_steps([(r["prompt"], r["steps"]) for r in rows])]


def run_best_of_n(job: BestOfNJob) -> dict[str, Any]:
    pools = candidates(read_rows(job.pool), job.prm, job.orm, job.device)
    check_aggregations([job.vote_by])
    result = curves(pools, job.ns, rules(job.vote_by, job.orm is not None), job.trials, job.seed)
    Path(job.out).parent.mkdir(parents=True, exist_ok=True)
    Path(job.out).write_text(json.dumps({"job": to_dict(job), "problems": len(pools), "curves": result}, indent=2) + "\n")
    return result
