"""The run directory: every call, candidate and verdict, appended as it happens; resume by replay.

    run.json           the settings that decide the calls (a rerun with other settings is refused)
    calls.jsonl        one row per LLM call: key, role, task, trajectory, iteration, the messages sent,
                       the reply's text, tokens, error and seconds
    candidates.jsonl   one row per candidate: key, task, trajectory, iteration, the code extracted
                       (None when there was none) and the evaluator's verdict (not a `task_error`,
                       `not_judged` or `sandbox_error`: those are judged again on resume)
    summary.json/.md   written at the end (metrics.py)

Resuming is replaying: the agent runs its loop from the start, and every call or candidate whose
key is already logged is answered from the log instead of the model or the evaluator. The loop
is a pure function of those answers, so a resumed run rebuilds the same memory and goes on where
the interrupted one stopped. A half-written last line (a killed process) is dropped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from reasonrl.envs.kernels.evaluate import Verdict
from reasonrl.envs.kernels.evaluate.verdict import UNSETTLED
from reasonrl.eval.store import read_rows as store_rows

from .llm import LLM, Call, Reply

UNLOGGED = UNSETTLED | {"task_error"}  # not the candidate's doing: judged again on resume


class SandboxFailure(RuntimeError):
    """The evaluator could not run a candidate at all (verdict `sandbox_error`): the run stops, and
    the candidate is judged again when it resumes."""


class RunLog:
    def __init__(self, out: str | Path, settings: dict[str, Any]):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        _check_settings(self.out / "run.json", settings)
        self.calls = {row["key"]: row for row in read_rows(self.out / "calls.jsonl")}
        self.candidates = {row["key"]: row for row in read_rows(self.out / "candidates.jsonl")}
        self.replayed = {"calls": 0, "candidates": 0}

    def complete(self, llm: LLM, calls: Sequence[Call], meta: Sequence[dict]) -> list[Reply]:
        """Replies to `calls`, from the log when it has them, else from `llm` (then logged)."""
        todo = [(c, m) for c, m in zip(calls, meta) if c.key not in self.calls]
        if todo:
            meta_of = {c.key: m for c, m in todo}

            def keep(c: Call, r: Reply) -> None:  # each reply as it arrives: paid for, never asked again
                if c.key not in self.calls:
                    self._append("calls.jsonl", [{
                        "key": c.key, "role": c.role, **meta_of[c.key], "seed": c.seed, "messages": c.messages,
                        "text": r.text, "tokens": r.tokens, "prompt_tokens": r.prompt_tokens, "error": r.error,
                        "seconds": r.seconds}], self.calls)

            replies = llm.complete([c for c, _ in todo], on_reply=keep)
            for (c, _), r in zip(todo, replies, strict=True):
                keep(c, r)  # those the model gave without calling back
        self.replayed["calls"] += len(calls) - len(todo)
        return [_reply(self.calls[c.key]) for c in calls]

    def evaluate(self, evaluator, items: Sequence[tuple[str, object, str | None, dict]]) -> list[Verdict]:
        """Verdicts of (key, task, code, meta) items, from the log or the evaluator (then logged).
        A `task_error` (the task's reference failed) or `not_judged` (it timed out once) is returned
        but not logged, so that a rerun asks again (a fixed suite file, a quieter machine)."""
        todo = [item for item in items if item[0] not in self.candidates]
        fresh = {}
        if todo:
            verdicts = evaluator.evaluate_many([(task, code) for _, task, code, _ in todo])
            rows = [{"key": key, **meta, "code": code, "verdict": v.to_dict()}
                    for (key, _, code, meta), v in zip(todo, verdicts, strict=True)]
            self._append("candidates.jsonl", [r for r in rows if r["verdict"]["status"] not in UNLOGGED],
                         self.candidates)
            broken = next((v for v in verdicts if v.status == "sandbox_error"), None)
            if broken is not None:  # the machine's failure, not the candidate's: stop, and judge it again on resume
                raise SandboxFailure(f"the evaluator's sandbox failed ({broken.message}); the candidate was not judged")
            fresh = {key: v for (key, *_), v in zip(todo, verdicts)}
        self.replayed["candidates"] += len(items) - len(todo)
        return [fresh[key] if key in fresh and key not in self.candidates
                else Verdict.from_dict(self.candidates[key]["verdict"]) for key, *_ in items]

    def _append(self, name: str, rows: list[dict], index: dict) -> None:
        with open(self.out / name, "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
                index[row["key"]] = row

    def write(self, name: str, text: str) -> Path:
        path = self.out / name
        path.write_text(text)
        return path


def _reply(row: dict) -> Reply:
    return Reply(row.get("text"), row.get("tokens"), row.get("prompt_tokens"), row.get("error"), row.get("seconds", 0.0))


def read_rows(path: Path) -> list[dict]:
    """The rows of a JSONL log with a "key" each; a half-written last line is cut off and dropped."""
    return store_rows(path, lambda row: isinstance(row.get("key"), str), "a row with a key")


def _check_settings(path: Path, settings: dict[str, Any]) -> None:
    settings = json.loads(json.dumps(settings))
    if path.exists():
        before = json.loads(path.read_text())
        changed = [f"{k}={settings.get(k)!r} (was {before.get(k)!r})" for k in sorted(set(before) | set(settings))
                   if before.get(k) != settings.get(k)]
        if changed:
            raise ValueError(f"{path.parent} holds a run with other settings: {', '.join(changed)}; use another "
                             "output directory, or delete this one to start over")
        return
    path.write_text(json.dumps(settings, indent=2) + "\n")
