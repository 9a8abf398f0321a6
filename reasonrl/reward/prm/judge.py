"""Step-correctness judgement against exact step labels, in ProcessBench form.

ProcessBench (arXiv 2412.06559) asks, per solution, for the index of the first wrong step, or none.
A PRM answers with the first step whose score is under `threshold`. Accuracy is measured separately
on erroneous solutions (the index must be exactly right) and on correct ones (it must say none);
the F1 is their harmonic mean (None when either kind of solution is missing: its accuracy is undefined). We also report step-level accuracy and the area under the ROC
curve of step scores (threshold-free). Labels are exact (the environment's), not a model's opinion.
"""

from __future__ import annotations

from typing import Sequence


def first_wrong(labels: Sequence[float], threshold: float = 0.5) -> int | None:
    """Index of the first step under `threshold`, or None when there is none."""
    return next((i for i, x in enumerate(labels) if x < threshold), None)


def processbench(scores: Sequence[Sequence[float]], exact: Sequence[Sequence[int]], threshold: float = 0.5) -> dict[str, float | None]:
    """ProcessBench metrics of per-step scores against exact per-step labels (1 right, 0 wrong)."""
    err_hit = err_n = ok_hit = ok_n = step_hit = step_n = 0
    for s, e in zip(scores, exact):
        truth, guess = first_wrong(e), first_wrong(s, threshold)
        if truth is None:
            ok_n, ok_hit = ok_n + 1, ok_hit + (guess is None)
        else:
            err_n, err_hit = err_n + 1, err_hit + (guess == truth)
        step_n += len(e)
        step_hit += sum((x >= threshold) == bool(y) for x, y in zip(s, e))
    if len(scores) != len(exact) or any(len(s) != len(e) for s, e in zip(scores, exact)):
        raise ValueError("processbench needs one score per labelled step of every solution")
    # an empty class has no accuracy (None), and then the F1 is undefined (None), not 0
    err_acc, ok_acc = (err_hit / err_n if err_n else None), (ok_hit / ok_n if ok_n else None)
    f1 = None if err_acc is None or ok_acc is None else 2 * err_acc * ok_acc / (err_acc + ok_acc) if err_acc + ok_acc else 0.0
    return {"f1": f1, "erroneous_accuracy": err_acc, "correct_accuracy": ok_acc, "step_accuracy": step_hit / max(step_n, 1),
            "step_auc": auc([x for s in scores for x in s], [y for e in exact for y in e]),
            "solutions": len(exact), "erroneous": err_n}


def auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """P(a random right step scores above a random wrong one), ties half (Mann-Whitney); 0.5 if one class is empty."""
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):  # average ranks over ties
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    pos = [r for r, y in zip(ranks, labels) if y]
    n_pos, n_neg = len(pos), len(labels) - len(pos)
    if not n_pos or not n_neg:
        return 0.5
    return (sum(pos) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
