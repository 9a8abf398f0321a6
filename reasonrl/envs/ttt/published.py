"""Loading the published TTT-Bench files, for users who have them.

Paper: TTT-Bench (arXiv 2506.10209); dataset amd/TTT-Bench, four files:
ttt_puzzles_test.json (oTTT), dttt_puzzles_test.json (dTTT), cube_puzzles_test.json (cTTT),
stones_puzzles_test.json (sTTT). Each holds records with at least `problem` and `solution`.

Accepted layouts: a JSON list of records, or JSON lines (one record per line). The game comes
from the file name, else from the problem wording. Departures: the separator of multi-answer
`solution` strings is unknown, so any run of commas, semicolons, slashes, spaces or "and"/"or"
splits it; each record gets `game` and `solution_list`, and `moves` when the move history can be
read from the problem text (None otherwise).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .games import GAMES, get_game

FILES = {
    "ttt_puzzles_test.json": "oTTT",
    "dttt_puzzles_test.json": "dTTT",
    "cube_puzzles_test.json": "cTTT",
    "stones_puzzles_test.json": "sTTT",
}
# Phrases of each game's rules, for files with other names.
_WORDING = (("two adjacent cubes", "cTTT"), ("two adjacent 3x3", "dTTT"), ("unit square", "sTTT"),
            ("3x3 grid", "oTTT"))
_SPLIT = re.compile(r"\s*(?:[,;/]|\band\b|\bor\b|\s)\s*")
_MOVE = re.compile(r"\b(Alice|Bob)\b[^.?]{0,60}?\bat ([A-Z])\.")


class PublishedFormatError(ValueError):
    """A published file or one of its records cannot be read."""


def load_published(path: str | Path, game: str | None = None) -> list[dict[str, Any]]:
    """The records of one published file, checked, with `game`, `solution_list` and `moves`."""
    path = Path(path)
    records = _read_records(path)
    name = game or FILES.get(path.name)
    out = []
    for i, record in enumerate(records):
        where = f"{path}: record {i}"
        if not isinstance(record, dict):
            raise PublishedFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
        for key in ("problem", "solution"):
            if not isinstance(record.get(key), str) or not record[key].strip():
                raise PublishedFormatError(f"{where}: field {key!r} must be a non-empty string")
        record_game = name or _game_from_wording(record["problem"])
        if record_game is None:
            raise PublishedFormatError(f"{where}: cannot tell the game from the file name or text")
        labels = get_game(record_game).labels
        solution = parse_solution(record["solution"])
        if not solution or any(label not in labels for label in solution):
            raise PublishedFormatError(
                f"{where}: solution {record['solution']!r} is not a list of {record_game} labels"
            )
        out.append({**record, "game": record_game, "solution_list": solution,
                    "moves": parse_moves(record["problem"], labels)})
    return out


def load_published_dir(directory: str | Path, games: tuple[str, ...] = tuple(GAMES)) -> list[dict]:
    """Records of every published file found in `directory` for `games`, in game order."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PublishedFormatError(f"{directory}: not a directory")
    out = []
    for filename, game in FILES.items():
        if game in games and (directory / filename).exists():
            out += load_published(directory / filename, game)
    if not out:
        raise PublishedFormatError(f"{directory}: none of {', '.join(FILES)} found for {games}")
    return out


def parse_solution(solution: str) -> list[str]:
    """Labels of a published solution string such as "G" or "A, B" (any separator)."""
    return [part for part in _SPLIT.split(solution.strip()) if part]


def parse_moves(problem: str, labels: str) -> list[str] | None:
    """The move history stated in a problem text, or None if it does not read as one."""
    start = problem.find("Alice first")
    if start < 0:
        return None
    moves = _MOVE.findall(problem[start:])
    if not moves or any(who != ("Alice", "Bob")[i % 2] or label not in labels
                        for i, (who, label) in enumerate(moves)):
        return None
    cells = [label for _, label in moves]
    return cells if len(set(cells)) == len(cells) else None


def _read_records(path: Path) -> list[Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PublishedFormatError(f"{path}: cannot read: {exc}") from exc
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PublishedFormatError(f"{path}: invalid JSON: {exc}") from exc
        return records
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise PublishedFormatError(f"{path}: line {number}: invalid JSON: {exc}") from exc
    return records


def _game_from_wording(problem: str) -> str | None:
    return next((game for phrase, game in _WORDING if phrase in problem), None)
