"""The run directory: `run.json` (settings) and `samples.jsonl` (one row per finished sample).

The samples file is append-only and flushed after every batch; on start it is read back and
only the samples it lacks are asked for. A process killed mid-write leaves at most one
half-written last line: it is dropped (the file is cut back to its last newline, so the next
row starts on a line of its own) and its sample is asked again. A later row for the same
(problem_id, sample) replaces an earlier one. Each row carries its problem's `fingerprint`, so
that a resume can tell a problem that changed under the same id (the harness refuses it).

`run.json` holds the settings that decide what a sample is (benchmark, model, endpoint,
sampling). Once a sample is recorded, a rerun with other settings into the same directory is
refused, so one file never mixes two runs; n, limit, k, concurrency and the endpoint's URL may
change (a larger n or limit extends the run; a restarted server may listen elsewhere).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable

from reasonrl.envs.base import Prompt

log = logging.getLogger(__name__)

SAMPLES_FILE = "samples.jsonl"
SETTINGS_FILE = "run.json"
Row = dict[str, Any]  # problem_id, sample, seed, response, extracted, reward, tokens, finish_reason, fingerprint


class SampleStore:
    def __init__(self, out: Path, settings: dict[str, Any]):
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / SAMPLES_FILE
        _check_settings(out / SETTINGS_FILE, self.path, settings)
        self.rows: dict[tuple[str, int], Row] = {}
        for row in read_samples(self.path):
            self.rows[(row["problem_id"], row["sample"])] = row
        self._file = open(self.path, "a", encoding="utf-8")

    def append(self, rows: Iterable[Row]) -> None:
        for row in rows:
            self._file.write(json_line(row))
            self.rows[(row["problem_id"], row["sample"])] = row
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SampleStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def json_line(row: dict[str, Any]) -> str:
    """`row` as one JSONL line (newline included)."""
    line = json.dumps(row, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a server: \u-escapes read back fine
        line = json.dumps(row)
    return line + "\n"


def fingerprint(prompt: Prompt) -> str:
    """A short hash of what a problem asks (its messages) and of its reference answer. What JSON
    cannot hold (an image) counts by its type only: a repr may hold a memory address."""
    data = json.dumps([prompt.messages, prompt.answer], default=lambda obj: type(obj).__name__)
    return hashlib.blake2b(data.encode(), digest_size=8).hexdigest()


def read_samples(path: Path) -> list[Row]:
    """The rows of a samples file, dropping a half-written last line (and cutting it off); a row
    missing what the summary reads (an edited file) is skipped, so it is sampled again."""
    return read_rows(path, _is_sample, "a sample row")


def _is_sample(row: dict[str, Any]) -> bool:
    reward = row.get("reward")
    return (isinstance(row.get("problem_id"), str) and isinstance(row.get("sample"), int)
            and isinstance(row.get("response"), str) and isinstance(reward, (int, float)) and not isinstance(reward, bool)
            and math.isfinite(reward) and (row.get("extracted") is None or isinstance(row["extracted"], str)))


def jsonl_lines(path: Path) -> list[str]:
    """The lines of a JSONL file, split at "\\n" only: splitlines() also splits at U+2028, U+0085...,
    which JSON strings hold raw (`json_line` writes them so, and so may any other writer)."""
    try:
        return Path(path).read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as exc:
        raise not_utf8(path, exc) from None


def not_utf8(path: Path, exc: UnicodeDecodeError) -> ValueError:
    """The error for a file that is not UTF-8, naming it and the line of the first bad byte."""
    line = exc.object.count(b"\n", 0, exc.start) + 1
    return ValueError(f"{path}:{line}: not UTF-8 text ({exc.reason}: byte {exc.object[exc.start]:#04x})")


def read_json(path: Path) -> Any:
    """The JSON in `path`; a damaged file raises ValueError naming it."""
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise not_utf8(path, exc) from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def read_rows(path: Path, is_row: Callable[[dict[str, Any]], bool], what: str = "a row",
              cut: bool = True) -> list[dict[str, Any]]:
    """The JSON objects of an append-only JSONL file for which `is_row` holds. A half-written last
    line (a process killed mid-write) is dropped and, with `cut`, cut off the file, so the next
    append starts on a line of its own (a reader beside a live writer passes cut=False); other
    unreadable lines are skipped with a warning."""
    if not path.exists():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        log.info("%s: dropping a half-written last line (%d bytes)", path, len(data) - keep)
        if cut:
            with open(path, "r+b") as f:
                f.truncate(keep)
        data = data[:keep]
    rows = []
    for line_no, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not (isinstance(row, dict) and is_row(row)):
                raise ValueError(f"not {what}")
        except ValueError as exc:  # an edited or damaged file: that row is redone
            log.warning("%s:%d: skipped (%s)", path, line_no, exc)
            continue
        rows.append(row)
    return rows


def _check_settings(settings_path: Path, samples_path: Path, settings: dict[str, Any]) -> None:
    settings = json.loads(json.dumps(settings))  # compare as stored: tuples are lists, 0 == 0.0
    has_samples = samples_path.exists() and samples_path.stat().st_size > 0
    if settings_path.exists() and has_samples:
        before = read_json(settings_path)
        if not isinstance(before, dict):
            raise ValueError(f"{settings_path}: expected the settings as a JSON object")
        changed = [f"{k}={settings.get(k)!r} (was {before.get(k)!r})" for k in sorted(set(before) | set(settings))
                   if before.get(k) != settings.get(k)]
        if changed:
            raise ValueError(f"{settings_path.parent} holds a run with other settings: {', '.join(changed)}; "
                             "use another output directory, or delete this one to start over")
        return
    if has_samples:
        raise ValueError(f"{samples_path} exists without {settings_path.name}: cannot tell which run it belongs "
                         "to; use another output directory")
    tmp = settings_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(settings, indent=2) + "\n")
    os.replace(tmp, settings_path)
