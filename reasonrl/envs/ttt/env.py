"""TTT-Bench as a reasonrl environment: fresh problems for training, held-out ones for eval.

Paper: TTT-Bench (arXiv 2506.10209). The paper evaluates with the problem text plus an
instruction to think step by step and answer in \\boxed{}; we put that instruction in a system
prompt. Departures: problems are generated (generate.py), so training never runs out; the
"train" and "eval" splits are disjoint by a hash of each problem's canonical position; the
published files, if given, are a third split "published".
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Sequence
from urllib.parse import parse_qsl

from ..base import Environment, Prompt
from . import text, verify
from .games import GAMES, get_game
from .generate import generate
from .problem import Problem, stones
from .published import load_published_dir
from .solver import Solver
from .symmetry import symmetry_of

SYSTEM_PROMPT = (
    "You are given a puzzle about a two-player board game. Reason step by step about the "
    "position, then give the position where the player should play next as a single label "
    "in \\boxed{}, for example \\boxed{E}."
)
SPLITS = ("train", "eval", "published")


class TTTEnvironment(Environment):
    """Prompts from the four TTT-Bench games; reward 1 for an answer in the solution set."""

    name = "ttt"

    def __init__(self, games: Sequence[str] = tuple(GAMES), published_dir: str | Path | None = None):
        self.games = tuple(get_game(g).name for g in games)
        if not self.games:
            raise ValueError("TTTEnvironment needs at least one game")
        self.published_dir = published_dir
        self._solvers = {g: Solver(get_game(g)) for g in self.games}  # tables kept across calls

    def prompts(self, n: int | None = None, seed: int = 0, split: str = "train") -> list[Prompt]:
        """`n` prompts spread evenly over the games (None: the published sizes, or all files).

        Problems are unique within one call; calls with other seeds may repeat some (the oTTT
        and cTTT spaces hold only hundreds). Fewer come back when a game's split runs out.
        """
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
        if split == "published":
            return self._published(n)
        counts = _spread(n, self.games)
        out = []
        for game in self.games:
            problems = generate(game, counts[game], seed, split, solver=self._solvers[game])
            out += [_prompt(p, split, seed) for p in problems]
        return out

    def score(self, prompt: Prompt, response: str) -> float:
        labels = get_game(prompt.metadata["game"]).labels
        return verify.score(response, prompt.answer, labels, _mover(prompt))

    def extract(self, prompt: Prompt, response: str) -> str | None:
        try:
            return verify.extract_answer(response, get_game(prompt.metadata["game"]).labels, _mover(prompt))
        except Exception:  # untrusted input: no answer, never an error
            return None

    def metrics(self, prompts: Sequence[Prompt], responses: Sequence[str], rewards: Sequence[float]) -> dict[str, float]:
        out = super().metrics(prompts, responses, rewards)
        groups = defaultdict(list)
        for prompt, reward in zip(prompts, rewards):
            groups[prompt.metadata["game"]].append(reward)
            groups[prompt.metadata["verdict"]].append(reward)
        out.update({f"accuracy/{k}": sum(r > 0 for r in v) / len(v) for k, v in groups.items()})
        return out

    def _published(self, n: int | None) -> list[Prompt]:
        if self.published_dir is None:
            raise ValueError("the 'published' split needs the published games' directory: the spec option "
                             "?published=DIR (e.g. ttt:oTTT?published=DIR), or TTTEnvironment(published_dir=DIR)")
        records = load_published_dir(self.published_dir, self.games)
        return [_published_prompt(r, i) for i, r in enumerate(records[:n])]


def from_spec(argument: str) -> TTTEnvironment:
    """`ttt:GAMES?published=DIR`, e.g. `ttt:oTTT,cTTT`; `ttt:all` or `ttt:` for all four games."""
    names, _, query = argument.partition("?")
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = set(options) - {"published"}
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(sorted(unknown))} for ttt:; known: published")
    games = tuple(g for g in names.split(",") if g and g != "all") or tuple(GAMES)
    return TTTEnvironment(games, published_dir=options.get("published") or None)


def _spread(n: int | None, games: tuple[str, ...]) -> dict[str, int]:
    if n is None:
        return {g: get_game(g).published_size for g in games}
    base, extra = divmod(n, len(games))
    return {g: base + (i < extra) for i, g in enumerate(games)}


def _mover(prompt: Prompt) -> str | None:
    """The player to move, as the problem's question names it (the verifier skips the other's moves)."""
    return text.asked_player(prompt.messages[-1]["content"])


def _messages(problem: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": problem}]


def _prompt(problem: Problem, split: str, seed: int) -> Prompt:
    game = get_game(problem.game)
    key = symmetry_of(game).canonical(*stones(game, problem.moves))
    record = problem.record()
    return Prompt(
        id=f"ttt/{game.name}/{key:x}",
        messages=_messages(record["problem"]),
        answer=list(problem.solution),
        metadata={"game": game.name, "verdict": problem.verdict, "split": split, "seed": seed,
                  "is_unique_solution": record["is_unique_solution"],
                  "game_value": problem.game_value, "optimal_moves": list(problem.optimal_moves)},
    )


def _published_prompt(record: dict, index: int) -> Prompt:
    return Prompt(
        id=f"ttt/{record['game']}/published/{record.get('problem_number', index)}",
        messages=_messages(record["problem"]),
        answer=record["solution_list"],
        metadata={"game": record["game"], "verdict": record.get("verdict", "unknown"),
                  "split": "published", "is_unique_solution": len(record["solution_list"]) == 1},
    )
