"""TTT-Bench (arXiv 2506.10209): four tic-tac-toe-style games as a verifiable RL environment.

games.py (boards as data) · rules.py (the published answer rule) · solver.py + breaker.py +
forks.py (exact solver) · symmetry.py · problem.py · generate.py · text.py (published wording)
· verify.py (answer scoring) · published.py (loader) · env.py · bench.py (export, benchmark).
"""

from .bench import benchmark, export_jsonl
from .env import TTTEnvironment, from_spec
from .games import GAMES, Game, get_game
from .generate import enumerate_problems, generate
from .problem import Problem
from .published import load_published, load_published_dir
from .rules import Answer, answer
from .solver import Solver
from .verify import extract_answer, score

__all__ = [
    "GAMES", "Answer", "Game", "Problem", "Solver", "TTTEnvironment", "answer", "benchmark",
    "enumerate_problems", "export_jsonl", "extract_answer", "from_spec", "generate", "get_game",
    "load_published", "load_published_dir", "score",
]
