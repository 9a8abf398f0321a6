"""`reasonrl report RUNDIR` for a kernel-agent run: the scaling curves as PNGs and a report.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .metrics import markdown


def is_agent_run(run_dir: str | Path) -> bool:
    path = Path(run_dir) / "summary.json"
    try:
        summary = json.loads(path.read_text()) if path.exists() else None
    except ValueError:
        return False
    return isinstance(summary, dict) and summary.get("kind") == "kernel-agent"


def plot(summary: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    rows = summary["by_iteration"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [r["iteration"] + 1 for r in rows]
    for key, label in (("exec_pass@1", "execution, pass@1"), ("exec_any", "execution, any trajectory"),
                       ("call_any", "call, any trajectory")):
        ax.plot(steps, [r[key] for r in rows], marker="o", label=label)
    ax.set(title="Accuracy by iteration (sequential scaling)", xlabel="iteration", ylabel="share of tasks", ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend()
    written.append(_save(fig, out / "accuracy_by_iteration.png"))
    ks = list(range(1, summary["parallel"] + 1))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(ks, [summary[f"pass@{k}"] or 0.0 for k in ks], marker="o", label="pass@k (unbiased)")
    ax.plot(ks, summary["by_trajectories"], marker="s", label="solved by the first k trajectories")
    ax.set(title="Accuracy by parallel trajectories", xlabel="k", ylabel="share of tasks", ylim=(0, 1))
    if len(ks) > 2:
        ax.set_xscale("log", base=2)
    ax.grid(alpha=0.3)
    ax.legend()
    written.append(_save(fig, out / "accuracy_by_trajectories.png"))
    return written


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    plots = plot(summary, run_dir)
    text = markdown(summary) + "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in plots) + "\n"
    path = run_dir / "report.md"
    path.write_text(text)
    return path
