"""Yield accounting: per stage, problems in and out, every drop's reason, calls and tokens spent.

Everything is read from the run directory's ledgers, so the figures cover every run that built
it (a resumed run reports what the whole run cost, not what its last process did): answered
calls are the ones paid for; rejected requests (the server refused them) cost nothing; tokens
are the endpoint's own usage counts, and calls whose endpoint reported none are counted apart.
The measure stage's samples of the reference policy are counted as policy samples.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from reasonrl.eval.store import read_samples

from .ledger import Ledger

EXAMPLES = 3  # drops shown per reason in the report


@dataclass
class StageReport:
    name: str
    inputs: int
    kept: int
    drops: dict[str, int] = field(default_factory=dict)  # reason -> problems
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> "id: detail" of the first few
    calls: int = 0  # answered model calls (chat/completions)
    embedding_calls: int = 0
    rejected: int = 0  # requests the server refused (nothing generated)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls_without_usage: int = 0  # answered calls whose endpoint reported no token counts
    policy_samples: int = 0  # the reference policy's samples (measure)
    policy_tokens: int = 0
    seconds: float = 0.0  # this process's time in the stage

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stage_report(ctx, name: str, problems: list, ledger: Ledger, seconds: float) -> StageReport:
    rows = [ledger.rows[p.id] for p in problems]
    drops = Counter(r["reason"] or "(no reason)" for r in rows if not r["kept"])
    examples: dict[str, list[str]] = {}
    for r in rows:
        reason = r["reason"] or "(no reason)"
        if not r["kept"] and len(examples.setdefault(reason, [])) < EXAMPLES:
            examples[reason].append(f"{r['id']}: {r['detail']}" if r["detail"] else r["id"])
    report = StageReport(name, len(rows), sum(r["kept"] for r in rows), dict(drops.most_common()), examples,
                         seconds=round(seconds, 3))
    for calls in call_ledgers(ctx.out, name):
        add_calls(report, calls)
    add_policy_samples(report, ctx.out / "measure" / name)
    return report


def call_ledgers(out: Path, name: str) -> list[Ledger]:
    """The call ledgers of stage `name`: calls/NAME.jsonl and calls/NAME.*.jsonl."""
    folder = out / "calls"
    paths = [p for p in sorted(folder.glob(f"{name}*.jsonl")) if p.stem == name or p.stem.startswith(name + ".")]
    return [Ledger(p, "key") for p in paths]


def add_calls(report: StageReport, ledger: Ledger) -> None:
    for row in ledger.rows.values():
        if "rejected" in row:
            report.rejected += 1
            continue
        if "embedding" in row:
            report.embedding_calls += 1
        else:
            report.calls += 1
        prompt, completion = row.get("prompt_tokens"), row.get("completion_tokens")
        if prompt is None and completion is None:
            report.calls_without_usage += 1
        report.prompt_tokens += prompt or 0
        report.completion_tokens += completion or 0


def add_policy_samples(report: StageReport, folder: Path) -> None:
    """The measure stage's samples: its eval run directory's, and those of settings changed since (measure.py)."""
    rows = [row for path in sorted(folder.rglob("samples.jsonl")) for row in read_samples(path)]
    report.policy_samples = len(rows)
    report.policy_tokens = sum(r.get("tokens") or 0 for r in rows)


def totals(reports: list[StageReport]) -> dict[str, int]:
    keys = ("calls", "embedding_calls", "rejected", "prompt_tokens", "completion_tokens", "calls_without_usage",
            "policy_samples", "policy_tokens")
    return {k: sum(getattr(r, k) for r in reports) for k in keys}


def mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def difficulty_summary(base: list, hiked: list, hike_inputs: list) -> dict[str, Any]:
    """Mean LLM rating and empirical difficulty of the accepted (exported) base and hiked problems,
    and of the base problems the accepted hiked ones were rewritten from (a paired view of what
    hiking did), looked up among `hike_inputs`, the base problems hiking was given."""
    by_id = {p.id: p for p in hike_inputs}
    sources = [by_id[p.hiked_from] for p in hiked if p.hiked_from in by_id]
    out = {}
    for label, group in (("base", base), ("hiked", hiked), ("hiked_sources", sources)):
        out[label] = {"problems": len(group), "rating_mean": mean([p.rating for p in group]),
                      "empirical_difficulty_mean": mean([p.empirical_difficulty for p in group])}
    return out


def summary(reports: list[StageReport], base: list, hiked: list, hike_inputs: list,
            exported: dict[str, int]) -> dict[str, Any]:
    """The report's figures; `base` and `hiked` are the accepted problems (see `difficulty_summary`)."""
    spent = totals(reports)
    accepted = exported.get("all", 0)
    return {"accepted": exported, "spent": spent,
            "accepted_per_call": accepted / spent["calls"] if spent["calls"] else None,
            "difficulty": difficulty_summary(base, hiked, hike_inputs), "stages": [r.to_dict() for r in reports]}
