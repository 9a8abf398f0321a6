"""The Difficulty Hiking topic file, and the draw of a central theorem and a supporting concept.

    Number Theory:                      # branch
      Modular arithmetic:               # topic
        theorems: [Fermat's little theorem, Chinese remainder theorem]
        tools_concepts: [orders of elements, lifting the exponent]

As in SAND-Math's `diffhiking_guided.py`: the theorem is drawn from the problem's own branch, the
concept from any branch. Departure: a branch the file lacks (the generator's "trigonometry" has no
entry in the released file) draws its theorem from every branch instead of failing the problem.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import yaml

from reasonrl.eval.store import not_utf8


@dataclass(frozen=True)
class Topics:
    theorems: dict[str, list[str]]  # branch (normalised) -> its theorems, in file order
    concepts: list[str]  # every tool or concept of every branch

    def draw(self, branch: str | None, rng: random.Random) -> tuple[str, str]:
        """(central theorem, supporting concept) for a problem of `branch`."""
        own = self.theorems.get(normal(branch or ""))
        pool = own if own else [t for ts in self.theorems.values() for t in ts]
        return rng.choice(pool), rng.choice(self.concepts)


def normal(branch: str) -> str:
    return " ".join(branch.lower().split())


def load_topics(path: str | Path) -> Topics:
    """The topic file at `path`; a malformed one raises ValueError naming the file and the entry."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"topic file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise not_utf8(path, exc) from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a mapping of branch -> topic -> {{theorems, tools_concepts}}")
    theorems: dict[str, list[str]] = {}
    concepts: list[str] = []
    for branch, topics in data.items():
        if not isinstance(topics, dict) or not topics:
            raise ValueError(f"{path}: {branch}: expected a mapping of topics")
        for topic, entry in topics.items():
            where = f"{path}: {branch}.{topic}"
            if not isinstance(entry, dict) or set(entry) - {"theorems", "tools_concepts"}:
                raise ValueError(f"{where}: expected {{theorems: [...], tools_concepts: [...]}}")
            for key in ("theorems", "tools_concepts"):
                items = entry.get(key, [])
                if not isinstance(items, list) or not all(isinstance(x, str) and x.strip() for x in items):
                    raise ValueError(f"{where}.{key}: expected a list of names")
            theorems.setdefault(normal(str(branch)), []).extend(entry.get("theorems", []))
            concepts.extend(entry.get("tools_concepts", []))
    theorems = {b: ts for b, ts in theorems.items() if ts}
    if not theorems or not concepts:
        raise ValueError(f"{path}: needs at least one theorem and one tool or concept")
    return Topics(theorems, concepts)
