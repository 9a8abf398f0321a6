"""`reasonrl data ttt` and `reasonrl bench ttt`: export problems, size the problem space, time it.

Paper: TTT-Bench (arXiv 2506.10209) publishes 412 problems; this measures how many distinct
problems its settings allow and how fast we make and score them.

Problem space: the number of symmetry classes of positions with a published move count whose
published-rule answer is sound (problem.sound). It is counted exactly by enumeration when the
board allows at most EXACT_LIMIT raw positions, else estimated by uniform sampling with
Burnside's lemma: #classes = sum over valid positions x of |Stab(x)| / |G|, so
T * mean(valid(x) * |Stab(x)| / |G|) over uniform samples x is unbiased (T = raw positions);
the estimate comes with its standard error.

Throughput is single-threaded, measured after a warm-up that builds the symmetry tables, in
wall-clock and in CPU seconds of this process. Generation is timed over
min(n, classes / 4) problems for exactly counted spaces, so that a small space (cTTT has a few
hundred problems) is not timed while being exhausted.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from . import verify
from .games import GAMES, Game, get_game
from .generate import enumerate_positions, enumerate_problems, generate
from .problem import sound
from .rules import answer, has_line
from .solver import Solver
from .symmetry import symmetry_of

EXACT_LIMIT = 1_000_000  # raw positions; dTTT has 325,325, sTTT 20 million
ESTIMATE_SAMPLES = 100_000
TIME_ENUMERATION_LIMIT = 100_000  # raw positions: oTTT and cTTT are also enumerated and verified in full


def export_jsonl(game: str, n: int, seed: int, out: str | Path) -> int:
    """Write up to `n` fresh problems of `game` to `out` as JSON lines; returns how many. The lines go
    to OUT.partial first, renamed into place at the end: a stopped run leaves `out` as it was."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial, written = path.with_name(path.name + ".partial"), 0
    try:
        with partial.open("w", encoding="utf-8") as f:
            for problem in generate(game, n, seed):
                f.write(json.dumps(problem.record(), ensure_ascii=False) + "\n")
                written += 1
    except KeyboardInterrupt:
        partial.unlink(missing_ok=True)
        raise KeyboardInterrupt(f"nothing was written: {path} is as it was") from None
    os.replace(partial, path)
    return written


def raw_positions(game: Game) -> int:
    """Positions with a published move count, ignoring wins."""
    return sum(_positions(game, k) for k in game.move_counts)


def _positions(game: Game, moves: int) -> int:
    """Ways to place (moves + 1) // 2 white and moves // 2 black stones: C(n, w) * C(n - w, b)."""
    white = (moves + 1) // 2
    return math.comb(game.n, white) * math.comb(game.n - white, moves // 2)


def count_problems(game: str | Game) -> dict:
    """Exact number of problems (symmetry classes with a sound answer) by class, by enumeration."""
    game = get_game(game) if isinstance(game, str) else game
    start, solver = time.perf_counter(), Solver(game)
    classes: Counter = Counter()
    for order, rule in enumerate_positions(game):
        white, black = sum(1 << c for c in order[0::2]), sum(1 << c for c in order[1::2])
        if sound(solver, rule, white, black):
            classes[_class_name(rule.verdict, not rule.moves & (rule.moves - 1))] += 1
    return {"method": "exact", "problems": sum(classes.values()), "by_class": dict(sorted(classes.items())),
            "enumerate_seconds": round(time.perf_counter() - start, 3)}


def time_enumeration(game: str) -> dict:
    """Seconds to enumerate and fully verify (value, optimal moves) every problem."""
    start = time.perf_counter()
    made = sum(1 for _ in enumerate_problems(game))
    return {"problems": made, "seconds": round(time.perf_counter() - start, 3)}


def estimate_problems(game: str | Game, samples: int = ESTIMATE_SAMPLES, seed: int = 0) -> dict:
    """Burnside estimate of the number of problems, with its standard error."""
    game = get_game(game) if isinstance(game, str) else game
    rng = random.Random(f"ttt-space:{game.name}:{seed}")
    symmetry, solver = symmetry_of(game), Solver(game)
    total, variance = 0.0, 0.0
    classes: Counter = Counter()
    per_count = samples // len(game.move_counts)
    for k in game.move_counts:
        weight = _positions(game, k)
        xs = []
        for _ in range(per_count):
            cells = rng.sample(range(game.n), k)
            white, black = sum(1 << c for c in cells[0::2]), sum(1 << c for c in cells[1::2])
            x, name = _sample_weight(game, solver, symmetry, white, black)
            xs.append(x)
            if name:
                classes[name] += weight * x / per_count
        mean = sum(xs) / len(xs)
        total += weight * mean
        variance += weight**2 * sum((x - mean) ** 2 for x in xs) / (len(xs) - 1) / len(xs)
    return {"method": f"estimate ({samples} uniform samples, Burnside)", "problems": round(total),
            "standard_error": round(math.sqrt(variance)),
            "by_class": {k: round(v) for k, v in sorted(classes.items())}}


def _sample_weight(game, solver, symmetry, white: int, black: int) -> tuple[float, str | None]:
    if has_line(game, white) or has_line(game, black):
        return 0.0, None
    rule = answer(game, white, black)
    if rule is None or not sound(solver, rule, white, black):
        return 0.0, None
    x = symmetry.stabilizer(white, black) / symmetry.size
    return x, _class_name(rule.verdict, not rule.moves & (rule.moves - 1))


def _class_name(verdict: str, unique: bool) -> str:
    return f"{verdict}/{'unique' if unique else 'multi'}"


def time_generator(game: str, n: int, seed: int = 0) -> dict:
    symmetry_of(get_game(game))  # warm-up: the tables are built once per process
    wall, cpu = time.perf_counter(), time.process_time()
    made = sum(1 for _ in generate(game, n, seed))
    wall, cpu = max(time.perf_counter() - wall, 1e-9), max(time.process_time() - cpu, 1e-9)
    return {"problems": made, "seconds": round(wall, 3), "cpu_seconds": round(cpu, 3),
            "per_second": round(made / wall), "per_cpu_second": round(made / cpu)}


def time_verifier(game: str, judgements: int = 20_000, seed: int = 0) -> dict:
    """Judgements per second on synthetic responses: ~2k characters of reasoning, then an
    answer (boxed, boxed in \\text{}, stated in prose, or missing)."""
    g = get_game(game)
    problems = list(generate(game, 50, seed))
    rng = random.Random(seed)
    endings = ("\\boxed{%s}", "\\boxed{\\text{%s}}", "So Bob should play at %s.", "I am not sure.")
    cases = []
    for i in range(200):
        p = problems[i % len(problems)]
        prose = " ".join(f"If we play {rng.choice(g.labels)}, the opponent answers {rng.choice(g.labels)}."
                         for _ in range(40))
        cases.append((prose + " " + endings[i % 4].replace("%s", p.solution[0]), p.solution))
    wall, cpu = time.perf_counter(), time.process_time()
    total = sum(verify.score(*cases[i % len(cases)], g.labels) for i in range(judgements))
    wall, cpu = max(time.perf_counter() - wall, 1e-9), max(time.process_time() - cpu, 1e-9)
    return {"judgements": judgements, "accepted": int(total), "seconds": round(wall, 3),
            "per_second": round(judgements / wall), "per_cpu_second": round(judgements / cpu)}


@dataclass
class TTTBenchConfig:
    games: list[str] = field(default_factory=lambda: list(GAMES))
    """Games to measure."""
    n: int = 1000
    """Problems generated per game."""
    count: bool = True
    """Also count each game's whole problem space (exhaustive)."""
    judgements: int = 20_000
    """Verifier calls timed per game."""


def benchmark(cfg: TTTBenchConfig = TTTBenchConfig()) -> dict:
    """Per game: problem-space size (if `count`), generator and verifier throughput; and `device`."""
    import torch

    from reasonrl.bench.common import device_name

    games, n, count, judgements = cfg.games, cfg.n, cfg.count, cfg.judgements
    report = {"device": device_name(torch.device("cpu"))}
    for name in games:
        game = get_game(name)
        entry = {"raw_positions": raw_positions(game)}
        measured = n
        if count:
            exact = raw_positions(game) <= EXACT_LIMIT
            entry["space"] = count_problems(game) if exact else estimate_problems(game)
            if exact:
                measured = max(1, min(n, entry["space"]["problems"] // 4))
        if raw_positions(game) <= TIME_ENUMERATION_LIMIT:
            entry["enumerate_and_verify"] = time_enumeration(name)
        entry["generator"] = time_generator(name, measured)
        entry["verifier"] = time_verifier(name, judgements)
        report[name] = entry
    return report
