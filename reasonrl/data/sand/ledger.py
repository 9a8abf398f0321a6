"""`Ledger`: an append-only JSONL file of rows keyed by a string field, read back on resume.

A run directory holds one per stage for decisions (`ledger/PASS.STAGE.jsonl`, keyed by problem
id) and one per stage for answered model calls (`calls/PASS.STAGE.jsonl`, keyed by call: problem
id plus the call's index), and one for verifier verdicts. Rows are flushed as they are written,
so a process killed at any moment loses at most the rows it was writing: a half-written last
line is cut off when the file is next read (eval/store.py's `read_rows`), and its row is redone.
A later row with the same key replaces an earlier one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from reasonrl.eval.store import json_line, read_rows


class Ledger:
    def __init__(self, path: Path, key: str = "id"):
        self.path, self.key = path, key
        self.rows: dict[str, dict[str, Any]] = {}
        for row in read_rows(path, lambda r: isinstance(r.get(key), str), f"a row with a string {key!r}"):
            self.rows[row[key]] = row

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def __len__(self) -> int:
        return len(self.rows)

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        rows = list(rows)
        if not rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)  # only once there is something to keep
        with open(self.path, "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json_line(row))
                self.rows[row[self.key]] = row
