"""From sample rows to the numbers a benchmark reports, and a markdown rendering of them.

A sample is correct when its reward is >= `threshold` (1.0 by default: solved, not partial
credit). pass@1 is the mean over problems of c/n (with the same n for every problem, the mean
over samples); pass@k is the unbiased estimator of passk.py. A problem with fewer than k
samples (an incomplete run) is left out of pass@k and counted in `problems`.

Subsets: rows are grouped by Prompt.metadata keys, `group_by` when given, else every key whose
values are scalars (str, int, bool) on all prompts and take 2 to 50 distinct values, except the
JSONL loader's row number `line`. For TTT-Bench that is game, verdict, is_unique_solution and
game_value; for a JSONL file, the fields its `metadata=` option copies (level, subject, ...).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

from reasonrl.envs.base import Prompt

from .passk import mean_pass_at_k
from .store import Row

Problem = tuple[Prompt, list[Row]]  # a prompt and its finished samples
MAX_SUBSETS = 50
PER_ROW_KEYS = {"line"}  # metadata that names a row, not a subset


def summarize(problems: Sequence[Problem], ks: Sequence[int], threshold: float, parse_known: bool,
              group_by: Sequence[str] | None = None) -> dict[str, Any]:
    ks = sorted({1, *ks})
    rows = [r for _, rs in problems for r in rs]
    out = stats(problems, ks, threshold, parse_known)
    tokens = [r.get("tokens") for r in rows]
    if rows and all(isinstance(t, int) for t in tokens):
        out["response_length"] = {"mean": sum(tokens) / len(rows), "unit": "tokens"}
    else:
        out["response_length"] = {"mean": sum(len(r["response"]) for r in rows) / max(len(rows), 1), "unit": "chars"}
    out["finish_reasons"] = dict(Counter(str(r.get("finish_reason")) for r in rows).most_common())
    out["subsets"] = {}
    for key in group_keys([p for p, _ in problems], group_by):
        groups: dict[str, list[Problem]] = {}
        for prompt, rs in problems:
            groups.setdefault(str(prompt.metadata.get(key, "(missing)")), []).append((prompt, rs))
        out["subsets"][key] = {value: stats(groups[value], ks, threshold, parse_known) for value in sorted(groups, key=_natural)}
    return out


def _natural(value: str) -> tuple:
    """Subset order: numbers by value (2 before 10), then names."""
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def stats(problems: Sequence[Problem], ks: Sequence[int], threshold: float, parse_known: bool) -> dict[str, Any]:
    rows = [r for _, rs in problems for r in rs]
    counts = [(len(rs), sum(r["reward"] >= threshold for r in rs)) for _, rs in problems if rs]
    out: dict[str, Any] = {"problems": len(problems), "samples": len(rows)}
    for k in ks:
        out[f"pass@{k}"] = mean_pass_at_k(counts, k)
    out["reward_mean"] = sum(r["reward"] for r in rows) / len(rows) if rows else None
    # None: the environment does not say what its answer is (Environment.extract not implemented)
    out["parse_failure_rate"] = sum(r["extracted"] is None for r in rows) / len(rows) if parse_known and rows else None
    return out


def group_keys(prompts: Sequence[Prompt], group_by: Sequence[str] | None) -> list[str]:
    if group_by is not None:
        return list(group_by)
    keys = []
    for key in dict.fromkeys(k for p in prompts for k in p.metadata if k not in PER_ROW_KEYS):
        values = [p.metadata.get(key) for p in prompts]
        if not all(isinstance(v, (str, int, bool)) for v in values):
            continue
        if 2 <= len(set(values)) <= MAX_SUBSETS:
            keys.append(key)
    return keys


def markdown(summary: dict[str, Any]) -> str:
    """The summary as markdown: the overall row, then one table per subset key."""
    ks = [key for key in summary if key.startswith("pass@")]
    head = ["problems", "samples", *ks, "reward", "parse failures"]
    lines = [f"# {summary['benchmark']} — {summary['model']}", "",
             f"{summary['n']} samples per problem, temperature {summary['settings']['temperature']}, "
             f"top_p {summary['settings']['top_p']}, max_tokens {summary['settings']['max_tokens']}, "
             f"seed {summary['settings']['seed']}.", ""]
    lines += _table("", head, [("all", summary)])
    length = summary["response_length"]
    finish = ", ".join(f"{k} {v}" for k, v in summary["finish_reasons"].items())
    lines += ["", f"Mean response length: {_fmt(length['mean'])} {length['unit']}. Finish reasons: {finish or '-'}."]
    if not summary["complete"]:
        why = [f"{summary['failed']} samples failed"] if summary["failed"] else []
        why += ["the run was stopped before every sample finished"] if summary.get("stopped") else []
        lines += ["", f"**Incomplete:** {' and '.join(why) or 'samples are missing'}; the missing samples are not "
                      "counted: rerun the same command to ask only for them."]
    for key, groups in summary["subsets"].items():
        lines += ["", f"## By {key}", ""]
        lines += _table(key, head, list(groups.items()))
    extra = _flatten(summary.get("env_metrics") or {})
    if extra:
        lines += ["", "## Environment metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in extra.items()]
    if summary.get("best_of_n"):
        from .scaling import markdown as scaling_markdown
        lines += ["", *scaling_markdown(summary["best_of_n"])]
    return "\n".join(lines) + "\n"


def _flatten(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested metrics as dotted keys ({"statuses": {"passed": 3}} -> {"statuses.passed": 3})."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else value
    return out


def _table(first: str, head: list[str], rows: list[tuple[str, dict]]) -> list[str]:
    names = {"reward": "reward_mean", "parse failures": "parse_failure_rate"}
    out = [f"| {first} | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for label, s in rows:
        out.append(f"| {label} | " + " | ".join(_fmt(s.get(names.get(h, h))) for h in head) + " |")
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)
