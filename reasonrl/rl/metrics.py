"""Per-step metrics: a JSONL file always, the trackers asked for (TensorBoard, W&B), one console line."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

from reasonrl.config import is_number
from reasonrl.eval.store import read_rows
from reasonrl.rl.trackers import Tracker

CONSOLE = [  # (label, key, format)
    ("reward", "reward_mean", "{:.3f}"), ("acc", "accuracy", "{:.2f}"), ("loss", "loss", "{:.4f}"),
    ("policy loss", "policy_loss", "{:.4f}"), ("ent", "entropy", "{:.3f}"), ("len p50", "length_p50", "{:.0f}"),
    ("p90", "length_p90", "{:.0f}"), ("trunc", "truncated_fraction", "{:.2f}"),
    ("rollout tok/s", "rollout_tokens_per_s", "{:.0f}"), ("idle", "tail_idle_fraction", "{:.2f}"),
    ("train tok/s", "train_tokens_per_s", "{:.0f}"), ("kl", "approx_kl", "{:.4f}"), ("clip", "clip_fraction", "{:.3f}"),
    ("gnorm", "grad_norm", "{:.2f}"), ("buf", "buffer_groups", "{:.0f}"), ("offpol", "off_policy_token_fraction", "{:.2f}"),
    ("dropped", "dropped_groups", "{:.0f}"), ("eval acc", "eval_accuracy", "{:.3f}"),
    ("eval reward", "eval_reward_mean", "{:.3f}"), ("eval loss", "eval_loss", "{:.4f}"),
    ("step", "step_seconds", "{:.1f}s"),
]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    v = sorted(values)
    return float(v[min(len(v) - 1, max(0, math.ceil(q / 100 * len(v)) - 1))])


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


class StepClock:
    """Wall time per step and the time left, from the steps run in this process (a resumed run's
    first steps are not slowed by the ones before the restart)."""

    def __init__(self, total_steps: int):
        self.total_steps = total_steps
        self.start = time.perf_counter()
        self.last = self.start
        self.steps = 0

    def tick(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        self.steps += 1
        mean = (now - self.start) / self.steps
        return {"step_seconds": seconds, "eta_seconds": mean * max(self.total_steps - step, 0)}


class MetricsLogger:
    def __init__(self, run_dir: str | Path, total_steps: int, console: bool = True, trackers: list[Tracker] = ()):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.total_steps, self.console, self.trackers = total_steps, console, list(trackers)

    def truncate_after(self, step: int) -> None:
        """On resume: forget steps logged after the checkpoint (they will run again); -1 forgets all."""
        if not self.path.is_file():
            return
        keep = [json.dumps(r) for r in _records(self.path, cut=True) if r.get("step", 0) <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        tmp.replace(self.path)  # atomic: a kill here leaves the old file or the new one

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        scalars = {k: v for k, v in record.items() if is_number(v) and k != "step"}
        for tracker in self.trackers:
            tracker.log(step, scalars)
        if self.console:
            parts = [f"{label} {_shown(metrics.get(key), record[key], fmt)}" for label, key, fmt in CONSOLE
                     if record.get(key) is not None or _nonfinite(metrics.get(key))]
            if record.get("eta_seconds") is not None and step < self.total_steps:
                parts.append(f"eta {duration(record['eta_seconds'])}")
            print(f"step {step}/{self.total_steps} | " + " | ".join(parts), file=sys.stderr, flush=True)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()


def _nonfinite(v: Any) -> bool:
    v = v.item() if hasattr(v, "item") else v
    return isinstance(v, float) and not math.isfinite(v)


def _shown(raw: Any, plain: Any, fmt: str) -> str:
    """The console's text of a value: nan and inf as such (the JSON record holds null for them)."""
    return str(raw.item() if hasattr(raw, "item") else raw) if _nonfinite(raw) else fmt.format(plain)


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def read_metrics(run_dir: str | Path, numbers: Callable[[str], bool] = lambda key: False) -> list[dict[str, Any]]:
    """The run's records; a row without an integer step, or with a value that is not a number or null
    under a key `numbers` names (those a reader computes with), is skipped with a warning."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.jsonl in {run_dir}")
    return _records(path, numbers=numbers)


def _records(path: Path, cut: bool = False, numbers: Callable[[str], bool] = lambda key: False) -> list[dict[str, Any]]:
    """The file's records; a last line cut short (a kill, a full disk mid-append) is dropped."""
    return read_rows(path, lambda row: _is_record(row, numbers), "a metrics record", cut=cut)


def _is_record(row: dict[str, Any], numbers: Callable[[str], bool]) -> bool:
    if "step" not in row and "round" in row:  # a RAFT round: the report says it has no steps to report
        return True
    step = row.get("step")  # (a record holds null for a value that was not finite)
    return isinstance(step, int) and not isinstance(step, bool) and all(
        v is None or is_number(v) for k, v in row.items() if numbers(k))
