"""Problem wording, board drawings and answer strings in the TTT-Bench format.

Paper: TTT-Bench (arXiv 2506.10209), prompts in Appendix B; dataset amd/TTT-Bench. The cTTT
wording and both cTTT drawings reproduce the published record (problem_number 0) exactly.

Departures from the published data, where it is unknown:
- oTTT, dTTT and sTTT wording follows the paper's prompts, move sentences included (the dataset
  may differ slightly); sTTT takes cTTT's "Then ..." move sentences, "..." for the paper's
  ". . ." and straight quotes around "diagonal square".
- Only cTTT's drawings are published. The other boards are drawn as rows of labels separated
  by single spaces (one line per row, each ending in a newline), using cTTT's symbols in the
  current-board drawing: W (Alice, white), B (Bob, black), * (empty).
- Several answers are joined as "A, B, C" (the published separator is unknown); the loader
  accepts any separator.
"""

from __future__ import annotations

from .games import Game

PLAYERS = ("Alice", "Bob")  # Alice moves first and plays white
COLOURS = {"Alice": "white", "Bob": "black"}
SYMBOLS = {"Alice": "W", "Bob": "B", None: "*"}
SEPARATOR = ", "

INTRO = {
    "oTTT": (
        "Alice and Bob are playing a game on a 3x3 grid. The points on the grid are labeled top "
        "to bottom, left to right, as A,B,C,D,E,F,G,H,I. Alice plays white. Bob plays black. At "
        "each turn, the player places a stone of the corresponding color onto one of the "
        "positions that has not been occupied. Whoever has three stones in a line (horizontal, "
        "vertical, or diagonal) wins."
    ),
    "dTTT": (
        "Alice and Bob are playing a game on two adjacent 3x3 grid. The points on the first grid "
        "are labeled top to bottom, left to right, as A,B,C,D,E,F,G,H,I. The points on the "
        "second grid are labeled top to bottom, left to right, as C,J,K,F,L,M,I,N,O. Note that "
        "points C,F, I are shared by the two grids. Alice plays white. Bob plays black. At each "
        "turn, the player places a stone of the corresponding color onto one of the positions "
        "that has not been occupied. Whoever has three stones in a line (horizontal, vertical, "
        "or diagonal) on either grid wins."
    ),
    "cTTT": (
        "Alice and Bob are playing a game on two adjacent cubes. ABCD forms the top rectangle in "
        "the first cube and BIJC forms the top rectangle in the second cube. EFGH forms the "
        "bottom rectangle in the first cube and FKLG forms the bottom rectangle in the second "
        "cube. AE is an edge, BF is an edge, CG is an edge, DH is an edge, IK is an edge, and JL "
        "is an edge. Note that vertices B,C,G,F are shared by the two cubes. Alice and Bob plays "
        "a game where they take turns to put stickers on the vertices of the cubes that have not "
        "been occupied. Alice plays white stickers. Bob plays black stickers. The person who has "
        "four stickers on the same plane on either cube wins."
    ),
    "sTTT": (
        "Alice and Bob are playing a game on a board. There are 5 equally spaced horizontal lines "
        "where the distance between two neighboring horizontal lines is 1. Similarly, there are "
        "5 equally spaced vertical lines, and the distance between two neighboring vertical "
        "lines is 1. There are 25 intersection points between the 5 horizontal lines and 5 "
        "vertical lines. These 25 points are labeled from top to bottom, left to right, as A, B, "
        "C, D, ..., Y. Alice plays white. Bob plays black. At each turn, the player places a "
        "stone of the corresponding color onto one of the 25 points that have not been "
        "occupied. Whoever has four stones that form either a unit square (with side length of "
        '1) or a "diagonal square" with side length equal to the square root of 2 wins. For '
        "example, ABGF is a unit square. FBHL is a diagonal square."
    ),
}

# The drawing of each board with every cell shown by its label; other characters are frame.
FRAME = {
    "oTTT": "A B C\nD E F\nG H I\n",
    "dTTT": "A B C J K\nD E F L M\nG H I N O\n",
    "cTTT": (
        "...D------C------J\n"
        "../|...../|...../|\n"
        "./.|..../.|..../.|\n"
        "A------B------I..|\n"
        "|..H---|--G...|..L\n"
        "|./....|./....|./\n"
        "|/.....|/.....|/\n"
        "E------F------K\n"
    ),
    "sTTT": "A B C D E\nF G H I J\nK L M N O\nP Q R S T\nU V W X Y\n",
}


def player(move_index: int) -> str:
    return PLAYERS[move_index % 2]


def move_sentence(game: str, index: int, label: str) -> str:
    """The sentence for move `index` (0-based) at `label`, in the game's published style."""
    who = player(index)
    full = f"places a {COLOURS[who]} stone at {label}."
    if index == 0:
        return f"Alice first {full}"
    if game == "oTTT":  # "Bob places a black stone at B. Alice places a white stone at C."
        return f"{who} {full}"
    if game == "dTTT":  # "Bob places a black stone at G. Then Alice at J."
        return f"Then Alice at {label}." if who == "Alice" else f"Bob {full}"
    return f"Then {who} {full}"  # cTTT (published record), sTTT


def problem_text(game: Game, moves: list[str]) -> str:
    """The full problem: rules, the moves so far, and the question for the next player."""
    sentences = [INTRO[game.name]]
    sentences += [move_sentence(game.name, i, label) for i, label in enumerate(moves)]
    sentences.append(f"Where should {player(len(moves))} play next?")
    return " ".join(sentences)


def asked_player(problem: str) -> str | None:
    """The player a problem's closing question ("Where should Bob play next?") names, or None."""
    return next((who for who in PLAYERS if problem.rstrip().endswith(f"Where should {who} play next?")), None)


def drawing(game: Game, moves: list[str] | None = None) -> str:
    """The board drawing: labels when `moves` is None, else W / B / * for each cell."""
    frame = FRAME[game.name]
    if moves is None:
        return frame
    owner = {label: player(i) for i, label in enumerate(moves)}
    return "".join(SYMBOLS[owner.get(ch)] if ch in game.labels else ch for ch in frame)


def solution_string(labels: list[str]) -> str:
    return SEPARATOR.join(labels)
