"""Which of a problem's solutions does each scorer put first? Best-of-N selection within a problem, the
choice RAFT makes every round, measured on exactly labelled `sums` solutions.

    python recipes/prm/select_probe.py runs/prm/pool-data/heldout-all.jsonl \
        --prm runs/prm/prm-mix-consistent4 runs/prm/prm-pool-exact --policy reasonrl/demo/policy

DATA is `prm label` output (rows with `exact` step labels), several solutions per problem (problems
with one are skipped; `--worked` sets guesses aside first). A solution is *right* when every step is, a *guess* when it is a box alone (one
step, no running total), else *wrong*. For each scorer, the share of problems whose top-scored solution
is of each kind:

- `random`: the expected share of a uniform pick;
- `lenient verifier`: a uniform pick among the solutions whose answer is within `--tolerance` of the
  sum (among all where none is), RAFT's lenient outcome reward;
- each `--prm`: the PRM's `--aggregation` of its step scores (`--detail`: also how often its top pick, and
  what mean score, goes to each kind of wrong solution: a term skipped, an extra step, a slipped total);
- each `--policy`: the policy's log-probability of the results it wrote, the lowest over the steps
  (a step's result: the characters after its last '=', a running total; a box's digits). This is a
  `sums`-specific probe of what the policy itself believes, not a reward the code offers.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import torch

from reasonrl.models import load_model
from reasonrl.models.tokenizer import Tokenizer
from reasonrl.reward.prm.model import load_prm
from reasonrl.reward.prm.scoring import PRMScorer, aggregate

KINDS = ("right", "wrong", "guess")


def kind(row: dict) -> str:
    if len(row["steps"]) == 1:
        return "guess"
    return "right" if all(row["exact"]) else "wrong"


def detail(row: dict) -> str:
    """`kind`, with wrong worked solutions told apart: a term skipped, an extra step, or a slip (every
    term there, a running total wrong)."""
    if kind(row) != "wrong":
        return kind(row)
    totals, terms = len(row["steps"]) - 1, row["metadata"]["terms"]
    return "skipped" if totals < terms - 1 else "extra" if totals > terms - 1 else "slip"


def result_logprob(model, tokenizer: Tokenizer, row: dict) -> float:
    """The lowest over steps of log p(the step's result characters | everything before them)."""
    prompt = tokenizer.apply_chat_template(row["prompt"])
    text = row["response"]
    piece = tokenizer.tok.encode(text, add_special_tokens=False)
    with torch.no_grad():
        hidden = model.forward_padded(torch.tensor([prompt + piece.ids]))
        logp = model.compute_logits(hidden[0, len(prompt) - 1:-1]).float().log_softmax(-1)
    token_logp = logp[torch.arange(len(piece.ids)), torch.tensor(piece.ids)].tolist()
    lowest, cursor = 0.0, 0
    for step in row["steps"]:
        start = text.find(step, cursor)
        end = cursor = start + len(step)
        eq = step.rfind("=")
        first = start + eq + 1 if eq >= 0 else start + (step.find("{") + 1 if "{" in step else 0)
        lowest = min(lowest, sum(lp for lp, (a, b) in zip(token_logp, piece.offsets) if a >= first and b <= end))
    return lowest


def shares(groups: list[list[tuple[dict, float]]]) -> dict[str, float]:
    counts = defaultdict(float)
    for group in groups:
        counts[kind(max(group, key=lambda g: g[1])[0])] += 1
    return {k: counts[k] / len(groups) for k in KINDS}


def expected(groups: list[list[dict]], accept) -> dict[str, float]:
    counts = defaultdict(float)
    for group in groups:
        pool = [r for r in group if accept(r)] or group
        for r in pool:
            counts[kind(r)] += 1 / len(pool)
    return {k: counts[k] / len(groups) for k in KINDS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--prm", nargs="*", default=[])
    parser.add_argument("--policy", nargs="*", default=[])
    parser.add_argument("--aggregation", default="min")
    parser.add_argument("--tolerance", type=float, default=2)
    parser.add_argument("--worked", action="store_true", help="set guesses aside: choose among worked solutions")
    parser.add_argument("--detail", action="store_true",
                        help="per PRM, also the top pick's and the mean score's split by kind of wrong solution")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [row for row in map(json.loads, open(args.data)) if not (args.worked and kind(row) == "guess")]
    by_problem = defaultdict(list)
    for i, row in enumerate(rows):
        by_problem[json.dumps(row["prompt"])].append(i)
    groups = [ids for ids in by_problem.values() if len(ids) > 1]
    print(f"{args.data}: {sum(map(len, groups))} solutions of {len(groups)} problems; "
          + ", ".join(f"{k} {sum(kind(rows[i]) == k for g in groups for i in g)}" for k in KINDS))

    def lenient(row: dict) -> bool:
        try:
            return abs(float(row["final"]) - float(row["answer"])) <= args.tolerance
        except (TypeError, ValueError):
            return False

    table = {"random": expected([[rows[i] for i in g] for g in groups], lambda r: True),
             f"lenient verifier (within {args.tolerance:g})": expected([[rows[i] for i in g] for g in groups], lenient)}
    for path in args.prm:
        scores = PRMScorer(*load_prm(path, device="cpu")).score([(rows[i]["prompt"], rows[i]["response"])
                                                                  for g in groups for i in g])
        it = iter(scores)
        scored = [[(rows[i], aggregate(next(it).read, args.aggregation)) for i in g] for g in groups]
        table[f"PRM {path} ({args.aggregation})"] = shares(scored)
        if args.detail:
            top, mean = defaultdict(int), defaultdict(list)
            for group in scored:
                top[detail(max(group, key=lambda g: g[1])[0])] += 1
                for row, score in group:
                    mean[detail(row)].append(score)
            print(f"{path}: top pick by kind {dict(top)}; mean score by kind "
                  + str({k: round(sum(v) / len(v), 3) for k, v in mean.items()}))
    for path in args.policy:
        model, tokenizer = load_model(path, dtype=torch.float32).eval(), Tokenizer.from_dir(path)
        table[f"policy {path}: lowest log p(result)"] = shares([[(rows[i], result_logprob(model, tokenizer, rows[i]))
                                                           for i in g] for g in groups])
    print("| top-scored solution of a problem | " + " | ".join(KINDS) + " |")
    print("|---|" + "---|" * len(KINDS))
    for name, share in table.items():
        print(f"| {name} | " + " | ".join(f"{share[k]:.2f}" for k in KINDS) + " |")


if __name__ == "__main__":
    main()
