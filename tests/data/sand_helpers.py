"""Recipes and runs for the SAND pipeline tests."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from reasonrl.data.sand import from_dict, run_sand
from reasonrl.engine.sampling_params import stable_seed

REPO = Path(__file__).resolve().parents[2]
SUMS_TOPICS = REPO / "recipes" / "sand-sums-topics.yaml"


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def sums_recipe(tmp_path: Path, url: str, **sections) -> dict:
    """A small recipe over the sums teacher's domain; `sections` are merged into it."""
    evals = write_jsonl(tmp_path / "evals.jsonl", [{"problem": "Add: 1 + 1 + 1 + 1 + 9"}])
    data = {"run": {"progress": False},
            "defaults": {"base_url": url, "model": "double", "max_tokens": 256, "concurrency": 4, "backoff": 0.1},
            "generate": {"problems": 12, "branches": ["small digits", "large digits", "mixed digits"],
                         "instructions": "Write an addition problem. Its main subject is {branch}; mix in {mix}. "
                                         "<Q></Q> <S></S>"},
            "solve": {"system_prompt": None}, "dedupe": {"ngram": 5},
            "decontaminate": {"eval_sets": [evals]}, "hike": {"topics": str(SUMS_TOPICS)},
            "export": {"min_solution_words": 1, "system_prompt": None}}
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return data


def run(data: dict, out: Path, **kwargs) -> dict:
    return run_sand(from_dict(data), out, console_output=False, **kwargs)


def write_recipe(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def slot_of(seed: int | None, stage: str, ids: list[str], run_seed: int = 0) -> str | None:
    """Which problem id a call of `stage` with this seed was for."""
    return next((i for i in ids if stable_seed(run_seed, stage, i) == seed), None)


def ledger(out: Path, name: str) -> dict[str, dict]:
    path = out / "ledger" / f"{name}.jsonl"
    return {row["id"]: row for row in map(json.loads, path.read_text().splitlines())} if path.exists() else {}


def report(out: Path) -> dict:
    data = json.loads((out / "report.json").read_text())
    data["by_stage"] = {s["name"]: s for s in data["stages"]}
    return data


def outputs(out: Path) -> dict[str, str]:
    """The files a run hands on, and every stage's decisions, for comparing two runs."""
    files = {name: (out / name).read_text() for name in ("problems.jsonl", "sft.jsonl", "sft_base.jsonl",
                                                         "sft_hiked.jsonl")}
    for path in sorted((out / "ledger").glob("*.jsonl")):
        rows = sorted(path.read_text().splitlines())
        files[f"ledger/{path.name}"] = "\n".join(rows)
    return files
