"""Per-step metrics: a JSONL file always, TensorBoard when it is installed, one console line."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

CONSOLE = [  # (label, key, format)
    ("reward", "reward_mean", "{:.3f}"), ("acc", "accuracy", "{:.2f}"), ("len p50", "length_p50", "{:.0f}"),
    ("p90", "length_p90", "{:.0f}"), ("max", "length_max", "{:.0f}"), ("rollout tok/s", "rollout_tokens_per_s", "{:.0f}"),
    ("idle", "tail_idle_fraction", "{:.2f}"), ("train tok/s", "train_tokens_per_s", "{:.0f}"), ("kl", "approx_kl", "{:.4f}"),
    ("clip", "clip_fraction", "{:.3f}"), ("gnorm", "grad_norm", "{:.2f}"), ("buf", "buffer_groups", "{:.0f}"),
    ("offpol", "off_policy_token_fraction", "{:.2f}"), ("dropped", "dropped_groups", "{:.0f}"),
    ("eval acc", "eval_accuracy", "{:.3f}"), ("eval reward", "eval_reward_mean", "{:.3f}"),
]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    v = sorted(values)
    return float(v[min(len(v) - 1, max(0, math.ceil(q / 100 * len(v)) - 1))])


class MetricsLogger:
    def __init__(self, run_dir: str | Path, total_steps: int, console: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.total_steps, self.console = total_steps, console
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        except Exception:  # tensorboard not installed: the JSONL file is the record
            self.tb = None

    def truncate_after(self, step: int) -> None:
        """On resume: forget steps logged after the checkpoint (they will run again)."""
        if not self.path.is_file():
            return
        keep = [line for line in self.path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in keep))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, step)
        if self.console:
            parts = [f"{label} {fmt.format(record[key])}" for label, key, fmt in CONSOLE if key in record]
            print(f"step {step}/{self.total_steps} | " + " | ".join(parts), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.jsonl in {run_dir}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
