"""`reasonrl report RUNDIR`: PNG plots and a markdown summary of a run's metrics.jsonl (train or sft).

Per-step series are lines; held-out evaluations (`eval_*`, measured every few steps) are drawn as
points only, so that two measurements far apart do not read as a trend between them. An environment
that reports accuracy per family (`accuracy/<family>`: shapes VQA, TTT games) also gets a table of
held-out accuracy per family, first evaluation against last, and a plot of each family's points.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from reasonrl.rl.metrics import read_metrics

log = logging.getLogger(__name__)
PLOTS = {  # file -> (title, y label, [(metric key, label)])
    "reward.png": ("Reward", "mean reward", [("reward_mean", "train reward"), ("eval_reward_mean", "held-out reward")]),
    "accuracy.png": ("Accuracy", "accuracy", [("accuracy", "train"), ("eval_accuracy", "held-out (greedy)")]),
    "loss.png": ("Loss", "loss", [("policy_loss", "policy loss"), ("loss", "training loss"),
                                  ("eval_loss", "held-out loss")]),
    "entropy.png": ("Policy entropy", "nats per token", [("entropy", "entropy")]),
    "length.png": ("Response length", "tokens", [("length_p50", "p50"), ("length_p90", "p90"), ("length_max", "max")]),
    "throughput.png": ("Throughput", "tokens / s", [("rollout_tokens_per_s", "rollout"), ("train_tokens_per_s", "training")]),
}
NUMBERS = {key for _, _, series in PLOTS.values() for key, _ in series} | {  # and those summarize() adds up
    "rollout_seconds", "train_seconds", "dropped_groups"}


def is_number_metric(key: str) -> bool:
    """A key the report computes with: a row holding anything but a number or null there is skipped."""
    return key in NUMBERS or key.startswith("eval_accuracy/")


def families(records: list[dict[str, Any]]) -> list[str]:
    """The families of per-family held-out accuracy (`eval_accuracy/<family>`) in a run's records."""
    return sorted({k.split("/", 1)[1] for r in records for k in r if k.startswith("eval_accuracy/")})


def family_table(records: list[dict[str, Any]]) -> list[str]:
    """Markdown rows: held-out accuracy per family at the first and the last evaluation."""
    names = families(records)
    evals = [r for r in records if any(f"eval_accuracy/{f}" in r for f in names)]
    if not evals:
        return []
    first, last = evals[0], evals[-1]
    rows = ["| family | held-out accuracy, step %d | step %d | change |" % (first["step"], last["step"]), "|---|---|---|---|"]
    for f in names:
        a, b = first.get(f"eval_accuracy/{f}"), last.get(f"eval_accuracy/{f}")
        change = f"{(b - a) * 100:+.1f} points" if a is not None and b is not None else "-"
        rows.append(f"| {f} | {_fmt(a)} | {_fmt(b)} | {change} |")
    return rows


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def plot(records: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    plots = dict(PLOTS)
    if names := families(records):
        plots["accuracy_by_family.png"] = ("Held-out accuracy per family", "accuracy",
                                           [(f"eval_accuracy/{f}", f) for f in names])
    for name, (title, ylabel, series) in plots.items():
        fig, ax = plt.subplots(figsize=(6, 3.5))
        drawn = False
        for key, label in series:
            points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
            if not points:
                continue
            if key.startswith("eval_"):  # sparse measurements: points, no line between them
                ax.plot(*zip(*points), linestyle="none", marker="o", markersize=6, label=label)
            else:
                ax.plot(*zip(*points), marker="o" if len(points) < 30 else None, label=label)
            drawn = True
        if not drawn:
            plt.close(fig)
            continue
        ax.set(title=title, xlabel="step", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        written.append(out_dir / name)
    return written


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Headline figures; a null value (a nan or inf the logger wrote as null) counts as missing."""
    train = [r for r in records if r.get("reward_mean") is not None]
    evals = [r for r in records if r.get("eval_accuracy") is not None]
    out: dict[str, Any] = {"steps": max((r["step"] for r in records), default=0)}
    if evals:
        out["accuracy_before"] = evals[0]["eval_accuracy"]
        out["accuracy_after"] = evals[-1]["eval_accuracy"]
    if train:
        k = max(1, len(train) // 5)
        out["reward_first"] = sum(r["reward_mean"] for r in train[:k]) / k
        out["reward_last"] = sum(r["reward_mean"] for r in train[-k:]) / k
        out["rollout_tokens_per_s"] = sum(r.get("rollout_tokens_per_s") or 0 for r in train) / len(train)
    rolled = [r for r in records if r.get("rollout_seconds") is not None]  # also steps that skipped their update
    if rolled:
        out["dropped_groups"] = sum(r.get("dropped_groups") or 0 for r in rolled)
        out["rollout_seconds"] = sum(r["rollout_seconds"] for r in rolled)
        out["train_seconds"] = sum(r.get("train_seconds") or 0 for r in rolled)
    losses = [r for r in records if r.get("loss") is not None and "reward_mean" not in r]  # an SFT run
    if losses:
        out["loss_first"], out["loss_last"] = losses[0]["loss"], losses[-1]["loss"]
    held = [r for r in records if r.get("eval_loss") is not None]
    if held:
        out["eval_loss_before"], out["eval_loss_after"] = held[0]["eval_loss"], held[-1]["eval_loss"]
    return out


def write_report(run_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    run_dir = Path(run_dir)
    records = read_metrics(run_dir, numbers=is_number_metric)
    if records and "step" not in records[0]:  # RAFT logs rounds; its summary.json is its report
        raise ValueError(f"{run_dir} is not a train or sft run (its metrics have no step): nothing to report")
    plots = plot(records, run_dir)
    summary = summarize(records)
    if extra is None and (stored := _stored_summary(run_dir / "summary.json")):  # the demo's own figures, kept
        if stored.get("steps") == summary["steps"]:  # not once the run went on
            extra = {k: v for k, v in stored.items() if k not in summary and k != "report"}
    summary = {**summary, **(extra or {})}
    lines = [f"# Run report: {run_dir.name}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in summary.items()]
    if table := family_table(records):
        lines += ["", *table]
    lines += [""] + [f"![{p.stem}]({p.name})" for p in plots]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _stored_summary(path: Path) -> dict[str, Any]:
    """summary.json's object; a damaged one (not JSON, not an object) is ignored with a warning naming it."""
    if not path.is_file():
        return {}
    try:
        stored = json.loads(path.read_text())
        if not isinstance(stored, dict):
            raise ValueError(f"not a JSON object but a {type(stored).__name__}")
    except ValueError as exc:
        log.warning("%s: ignored (%s)", path, exc)
        return {}
    return stored
