"""The run's report: report.json (every figure), report.md (tables and plots), and a console table.

Plots (PNG, as `reasonrl report` draws them): the funnel (problems in and kept per stage), the
drops (every reason, per stage), the calls spent per stage, and the difficulty of the accepted
base and hiked problems (LLM rating and empirical difficulty).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_report(out: Path, summary: dict[str, Any], base: list, hiked: list) -> Path:
    (out / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    plots = plot(out, summary["stages"], base, hiked)
    path = out / "report.md"
    path.write_text("\n".join(markdown(summary) + [""] + [f"![{p.stem}]({p.name})" for p in plots]) + "\n")
    return path


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def headline(summary: dict[str, Any]) -> list[str]:
    acc, spent = summary["accepted"], summary["spent"]
    lines = [f"accepted problems: {acc.get('all', 0)} (base {acc.get('base', 0)}, hiked {acc.get('hiked', 0)})",
             f"model calls: {spent['calls']:,} answered, {spent['rejected']:,} refused by the server, "
             f"{spent['embedding_calls']:,} embeddings, {spent['policy_samples']:,} reference-policy samples",
             f"tokens: {spent['prompt_tokens']:,} prompt + {spent['completion_tokens']:,} completion"
             + (f" ({spent['calls_without_usage']:,} calls reported none)" if spent["calls_without_usage"] else ""),
             f"accepted problems per call: {_fmt(summary['accepted_per_call'], 3)}"]
    for label, d in summary["difficulty"].items():
        if d["problems"]:
            lines.append(f"{label}: {d['problems']} problems, mean rating {_fmt(d['rating_mean'])}, mean empirical "
                         f"difficulty {_fmt(d['empirical_difficulty_mean'])}")
    return lines


STAGE_COLUMNS = ("stage", "in", "kept", "dropped", "calls", "refused", "prompt tok", "completion tok", "samples")


def stage_rows(stages: list[dict]) -> list[list[str]]:
    return [[s["name"], _fmt(s["inputs"]), _fmt(s["kept"]), _fmt(s["inputs"] - s["kept"]),
             _fmt(s["calls"] + s["embedding_calls"]), _fmt(s["rejected"]), _fmt(s["prompt_tokens"]),
             _fmt(s["completion_tokens"]), _fmt(s["policy_samples"])] for s in stages]


def markdown(summary: dict[str, Any]) -> list[str]:
    lines = ["# SAND-Math run report", ""] + [f"- {line}" for line in headline(summary)]
    lines += ["", "## Stages", "", "| " + " | ".join(STAGE_COLUMNS) + " |", "|---" * len(STAGE_COLUMNS) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in stage_rows(summary["stages"])]
    lines += ["", "## Why problems were dropped", ""]
    for s in summary["stages"]:
        for reason, count in s["drops"].items():
            examples = "; ".join(s["examples"].get(reason, []))
            lines.append(f"- **{s['name']}**: {reason}: {count}" + (f" (e.g. {examples})" if examples else ""))
    return lines


def console(summary: dict[str, Any]) -> str:
    rows = [list(STAGE_COLUMNS)] + stage_rows(summary["stages"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(STAGE_COLUMNS))]
    table = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    drops = [f"  {s['name']}: {reason}: {n}" for s in summary["stages"] for reason, n in s["drops"].items()]
    return "\n".join(table + (["dropped because:"] + drops if drops else []) + headline(summary))


def plot(out: Path, stages: list[dict], base: list, hiked: list) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name, draw in (("funnel.png", _funnel), ("drops.png", _drops), ("calls.png", _calls),
                       ("difficulty.png", _difficulty)):
        fig = draw(plt, stages, base, hiked)
        if fig is None:
            continue
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(out / name)
    return written


def _funnel(plt, stages, base, hiked):
    stages = [s for s in stages if s["inputs"]]
    names = [s["name"] for s in stages][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) + 1.2))
    ax.barh(names, [s["inputs"] for s in stages][::-1], color="#c6dbef", label="in")
    ax.barh(names, [s["kept"] for s in stages][::-1], color="#2171b5", label="kept")
    ax.set(title="Problems per stage", xlabel="problems")
    ax.legend()
    return fig


def _drops(plt, stages, base, hiked):
    items = [(f"{s['name']}: {reason}"[:70], n) for s in stages for reason, n in s["drops"].items()]
    if not items:
        return None
    fig, ax = plt.subplots(figsize=(10, 0.3 * len(items) + 1.2))
    ax.barh([k for k, _ in items][::-1], [n for _, n in items][::-1], color="#cb181d")
    ax.set(title="Dropped problems by stage and reason", xlabel="problems")
    return fig


def _calls(plt, stages, base, hiked):
    spent = [s for s in stages if s["calls"] or s["embedding_calls"] or s["policy_samples"]]
    if not spent:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(spent) + 1.2))
    names = [s["name"] for s in spent][::-1]
    ax.barh(names, [s["calls"] for s in spent][::-1], label="LLM calls")
    ax.barh(names, [s["embedding_calls"] for s in spent][::-1], left=[s["calls"] for s in spent][::-1],
            label="embeddings")
    ax.barh(names, [s["policy_samples"] for s in spent][::-1],
            left=[s["calls"] + s["embedding_calls"] for s in spent][::-1], label="policy samples")
    ax.set(title="Calls per stage", xlabel="calls")
    ax.legend()
    return fig


def _difficulty(plt, stages, base, hiked):
    if not base and not hiked:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    bins_rating = [x / 2 + 0.75 for x in range(20)]  # centred on the 0.5 grid, 1 .. 10
    for label, group in (("base", base), ("hiked", hiked)):
        ratings = [p.rating for p in group if p.rating is not None]
        empirical = [p.empirical_difficulty for p in group if p.empirical_difficulty is not None]
        if ratings:
            left.hist(ratings, bins=bins_rating, alpha=0.6, label=f"{label} ({len(ratings)})")
        if empirical:
            right.hist(empirical, bins=[i / 10 - 0.05 for i in range(12)], alpha=0.6, label=f"{label} ({len(empirical)})")
    left.set(title="LLM rating", xlabel="rating (1-10)", ylabel="problems")
    right.set(title="Empirical difficulty", xlabel="1 - pass rate of the reference policy")
    for ax in (left, right):
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    return fig
