"""The four boards' tables, re-derived from coordinates and geometry, and their symmetries."""

import itertools

import pytest

from reasonrl.envs.ttt.games import GAMES, get_game
from reasonrl.envs.ttt.symmetry import Symmetry


def _collinear(p, q, r):
    return (q[0] - p[0]) * (r[1] - p[1]) == (q[1] - p[1]) * (r[0] - p[0])


def _grid_lines(labels):
    """All collinear triples of a 3x3 grid of points given row by row."""
    coords = {labels[3 * r + c]: (r, c) for r in range(3) for c in range(3)}
    return {frozenset(t) for t in itertools.combinations(labels, 3) if _collinear(*(coords[x] for x in t))}


def _sets(game):
    return {frozenset(s) for s in game.winning_sets}


def test_ottt_lines_are_the_collinear_triples():
    game = get_game("oTTT")
    assert game.labels == "ABCDEFGHI"
    assert len(game.winning_sets) == 8
    assert _sets(game) == _grid_lines("ABCDEFGHI")


def test_dttt_lines_lie_within_one_grid():
    game = get_game("dTTT")
    first, second = _grid_lines("ABCDEFGHI"), _grid_lines("CJKFLMINO")
    assert first & second == {frozenset("CFI")}  # the shared line counts once
    assert len(game.winning_sets) == 15 == len(_sets(game))
    assert _sets(game) == first | second
    assert frozenset("BCJ") not in _sets(game) and frozenset("EFL") not in _sets(game)


# (x, y, z): x left to right across both cubes, y front (0) / back (1), z bottom (0) / top (1),
# read off the published drawing: top layer D C J / A B I, bottom layer H G L / E F K.
CUBE_COORDS = {
    "A": (0, 0, 1), "B": (1, 0, 1), "I": (2, 0, 1), "D": (0, 1, 1), "C": (1, 1, 1), "J": (2, 1, 1),
    "E": (0, 0, 0), "F": (1, 0, 0), "K": (2, 0, 0), "H": (0, 1, 0), "G": (1, 1, 0), "L": (2, 1, 0),
}


def _coplanar(points):
    p0 = points[0]
    u, v, w = ([a - b for a, b in zip(p, p0)] for p in points[1:])
    det = (u[0] * (v[1] * w[2] - v[2] * w[1]) - u[1] * (v[0] * w[2] - v[2] * w[0])
           + u[2] * (v[0] * w[1] - v[1] * w[0]))
    return det == 0


def test_cttt_planes_are_the_coplanar_quadruples_of_each_cube():
    game = get_game("cTTT")
    cubes = [[k for k, (x, _, _) in CUBE_COORDS.items() if x in xs] for xs in ((0, 1), (1, 2))]
    planes = []
    for cube in cubes:
        found = {frozenset(q) for q in itertools.combinations(cube, 4)
                 if _coplanar([CUBE_COORDS[c] for c in q])}
        assert len(found) == 12  # 6 faces + 6 diagonal rectangles
        planes.append(found)
    assert planes[0] & planes[1] == {frozenset("BCGF")}
    assert len(game.winning_sets) == 23 == len(_sets(game))
    assert _sets(game) == planes[0] | planes[1]
    # the paper's examples: a win with A-C-G-E, a fork with A-D-H-E and D-C-E-F
    assert {frozenset("ACGE"), frozenset("ADHE"), frozenset("DCEF")} <= _sets(game)
    # vertical edges of the drawing join vertices that differ only in height
    for a, b in ("AE", "BF", "CG", "DH", "IK", "JL"):
        assert CUBE_COORDS[a][:2] == CUBE_COORDS[b][:2] and CUBE_COORDS[a][2] != CUBE_COORDS[b][2]


def test_sttt_squares_have_side_one_or_root_two():
    game = get_game("sTTT")
    coords = {game.labels[5 * r + c]: (r, c) for r in range(5) for c in range(5)}

    def side2(quad):  # squared side if the four points form a square, else None
        d = sorted((coords[a][0] - coords[b][0]) ** 2 + (coords[a][1] - coords[b][1]) ** 2
                   for a, b in itertools.combinations(quad, 2))
        return d[0] if d[:4] == [d[0]] * 4 and d[4:] == [2 * d[0]] * 2 else None

    squares = {frozenset(q): side2(q) for q in itertools.combinations(game.labels, 4) if side2(q)}
    wanted = {q for q, s in squares.items() if s in (1, 2)}
    assert sum(s == 1 for s in squares.values()) == 16 and sum(s == 2 for s in squares.values()) == 9
    assert len(game.winning_sets) == 25 == len(_sets(game))
    assert _sets(game) == wanted
    assert {frozenset("ABGF"), frozenset("FBHL")} <= _sets(game)  # the rules' examples
    assert frozenset("ACHG") not in _sets(game)  # the paper's typo: not a square


def _automorphisms(game):
    """Every relabelling that maps winning sets onto winning sets (backtracking search)."""
    sets = _sets(game)
    through = {c: [s for s in sets if c in s] for c in game.labels}
    labels = []  # assign cells that share most sets with those already assigned first
    while len(labels) < game.n:
        labels.append(max((c for c in game.labels if c not in labels),
                          key=lambda c: sum(x in labels for s in through[c] for x in s)))
    image = {}

    def extend(i):
        if i == len(labels):
            yield "".join(image[c] for c in game.labels)
            return
        c = labels[i]
        for d in labels:
            if d in image.values() or len(through[d]) != len(through[c]):
                continue
            image[c] = d
            if all(frozenset(image[x] for x in s) in sets for s in through[c] if all(x in image for x in s)):
                yield from extend(i + 1)
            del image[c]

    return set(extend(0))


@pytest.mark.parametrize("name,order", [("oTTT", 8), ("dTTT", 4), ("cTTT", 64), ("sTTT", 8)])
def test_symmetries_are_the_whole_automorphism_group(name, order):
    game = get_game(name)
    assert len(game.symmetries) == order == len(set(game.symmetries))
    for perm in game.symmetries:
        assert sorted(perm) == sorted(game.labels)
        relabel = dict(zip(game.labels, perm))
        assert {frozenset(relabel[c] for c in s) for s in _sets(game)} == _sets(game)
    assert set(game.symmetries) == _automorphisms(game)


@pytest.mark.parametrize("name", list(GAMES))
def test_symmetry_tables_match_direct_relabelling(name):
    game = get_game(name)
    symmetry = Symmetry(game)
    white, black = game.mask(game.labels[0::3]), game.mask(game.labels[1::5])
    black &= ~white
    for g, perm in enumerate(game.perms):
        moved = lambda m: sum(1 << perm[i] for i in range(game.n) if m >> i & 1)  # noqa: E731
        assert symmetry.image(g, white) == moved(white)
        assert symmetry.images(white, black)[g] == moved(white) | moved(black) << game.n
    assert symmetry.canonical(white, black) == min(symmetry.images(white, black))


def test_published_settings_match_the_format_file():
    sizes = {name: game.published_size for name, game in GAMES.items()}
    assert sizes == {"oTTT": 102, "dTTT": 100, "cTTT": 90, "sTTT": 120} and sum(sizes.values()) == 412
    for game in GAMES.values():
        assert sum(c for _, c in game.verdict_counts) == game.published_size
    assert {name: game.move_counts for name, game in GAMES.items()} == {
        "oTTT": (4, 5), "dTTT": (6, 7), "cTTT": (5, 6, 7), "sTTT": (6, 7)}
