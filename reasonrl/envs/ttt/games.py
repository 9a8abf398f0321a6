"""The four TTT-Bench boards as data: labels, winning sets, symmetries, published settings.

Paper: TTT-Bench (Mishra et al., arXiv 2506.10209), Section 3.1 and Appendix A/B; the released
dataset amd/TTT-Bench. Labels, winning sets, move counts and answer mixes follow the paper's
text and figures and the dataset's files and viewer.

Departures from the paper:
- The paper has no symmetry tables. Ours list every automorphism of each game's win-set
  hypergraph (a relabelling that maps winning sets onto winning sets), found by exhaustive
  search and checked in tests: oTTT 8, dTTT 4, cTTT 64 (more than the 16 rigid motions of the
  two-cube box: each cube's four unshared vertices can also be swapped antipodally), sTTT 8.
- The paper gives the verdict counts and the single/multiple-answer counts separately; how
  they combine is inferred in generate.published_mix.

Position encoding used everywhere in this package: bit i of a mask is the cell `labels[i]`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

VERDICTS = ("win", "blocked", "fork")


@dataclass(frozen=True)
class Game:
    name: str
    labels: str  # cell i is labels[i]; labels are in alphabetical order
    winning_sets: tuple[str, ...]  # each a string of labels
    symmetries: tuple[str, ...]  # each the image of `labels`: cell labels[i] maps to perm[i]
    move_counts: tuple[int, ...]  # stones already on the board in published problems
    verdict_counts: tuple[tuple[str, int], ...]  # published problems per verdict
    unique_counts: tuple[int, int]  # published problems with one answer, with several
    n: int = field(init=False)
    full: int = field(init=False)  # mask of every cell
    set_masks: tuple[int, ...] = field(init=False)
    perms: tuple[tuple[int, ...], ...] = field(init=False)  # perms[g][i] = image cell of i

    def __post_init__(self):
        index = {label: i for i, label in enumerate(self.labels)}
        derived = {
            "n": len(self.labels),
            "full": (1 << len(self.labels)) - 1,
            "set_masks": tuple(sum(1 << index[c] for c in s) for s in self.winning_sets),
            "perms": tuple(tuple(index[c] for c in p) for p in self.symmetries),
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)  # frozen dataclass: set once, here

    def mask(self, labels: str) -> int:
        return sum(1 << self.labels.index(c) for c in labels)

    def cells(self, mask: int) -> str:
        return "".join(label for i, label in enumerate(self.labels) if mask >> i & 1)

    @property
    def published_size(self) -> int:
        return sum(self.unique_counts)


OTTT = Game(
    name="oTTT",
    labels="ABCDEFGHI",
    # A B C
    # D E F
    # G H I
    winning_sets=("ABC", "DEF", "GHI", "ADG", "BEH", "CFI", "AEI", "CEG"),
    symmetries=(
        "ABCDEFGHI", "ADGBEHCFI", "CBAFEDIHG", "CFIBEHADG",
        "GDAHEBIFC", "GHIDEFABC", "IFCHEBGDA", "IHGFEDCBA",
    ),
    move_counts=(4, 5),
    verdict_counts=(("win", 40), ("blocked", 40), ("fork", 22)),
    unique_counts=(93, 9),
)

DTTT = Game(
    name="dTTT",
    labels="ABCDEFGHIJKLMNO",
    # A B C J K    grid 1 is A..I, grid 2 is C J K / F L M / I N O;
    # D E F L M    a line counts only inside one grid, and C-F-I (in both) once.
    # G H I N O
    winning_sets=(
        "ABC", "DEF", "GHI", "ADG", "BEH", "CFI", "AEI", "CEG",
        "CJK", "FLM", "INO", "JLN", "KMO", "CLO", "ILK",
    ),
    symmetries=("ABCDEFGHIJKLMNO", "GHIDEFABCNOLMJK", "KJCMLFONIBAEDHG", "ONIMLFKJCHGEDBA"),
    move_counts=(6, 7),
    verdict_counts=(("win", 40), ("blocked", 20), ("fork", 40)),
    unique_counts=(60, 40),
)

CTTT = Game(
    name="cTTT",
    labels="ABCDEFGHIJKL",
    # top layer:    D C J (back)   A B I (front);  bottom layer: H G L (back)  E F K (front)
    # cube 1 = ABCD over EFGH, cube 2 = BIJC over FKLG, shared face BCGF.
    winning_sets=(
        # cube 1: six faces, six diagonal rectangles
        "ABCD", "EFGH", "ABFE", "DCGH", "ADHE", "BCGF",
        "ACGE", "BDHF", "ABGH", "DCFE", "ADGF", "BCHE",
        # cube 2 (its face BCGF is listed above)
        "BIJC", "FKLG", "BIKF", "CJLG", "IJLK",
        "BJLF", "ICGK", "BILG", "CJKF", "BCLK", "IJGF",
    ),
    symmetries=(
        "ABCDEFGHIJKL", "ABCDEFGHLKJI", "ABFEDCGHIKJL", "ABFEDCGHLJKI", "AGCEDFBHIKJL", "AGCEDFBHLJKI",
        "AGFDECBHIJKL", "AGFDECBHLKJI", "DCBAHGFEJILK", "DCBAHGFEKLIJ", "DCGHABFEJLIK", "DCGHABFEKILJ",
        "DFBHAGCEJLIK", "DFBHAGCEKILJ", "DFGAHBCEJILK", "DFGAHBCEKLIJ", "ECBHAGFDJILK", "ECBHAGFDKLIJ",
        "ECGAHBFDJLIK", "ECGAHBFDKILJ", "EFBAHGCDJLIK", "EFBAHGCDKILJ", "EFGHABCDJILK", "EFGHABCDKLIJ",
        "HBCEDFGAIJKL", "HBCEDFGALKJI", "HBFDECGAIKJL", "HBFDECGALJKI", "HGCDEFBAIKJL", "HGCDEFBALJKI",
        "HGFEDCBAIJKL", "HGFEDCBALKJI", "IBCJKFGLADEH", "IBCJKFGLHEDA", "IBFKJCGLAEDH", "IBFKJCGLHDEA",
        "IGCKJFBLAEDH", "IGCKJFBLHDEA", "IGFJKCBLADEH", "IGFJKCBLHEDA", "JCBILGFKDAHE", "JCBILGFKEHAD",
        "JCGLIBFKDHAE", "JCGLIBFKEAHD", "JFBLIGCKDHAE", "JFBLIGCKEAHD", "JFGILBCKDAHE", "JFGILBCKEHAD",
        "KCBLIGFJDAHE", "KCBLIGFJEHAD", "KCGILBFJDHAE", "KCGILBFJEAHD", "KFBILGCJDHAE", "KFBILGCJEAHD",
        "KFGLIBCJDAHE", "KFGLIBCJEHAD", "LBCKJFGIADEH", "LBCKJFGIHEDA", "LBFJKCGIAEDH", "LBFJKCGIHDEA",
        "LGCJKFBIAEDH", "LGCJKFBIHDEA", "LGFKJCBIADEH", "LGFKJCBIHEDA",
    ),
    move_counts=(5, 6, 7),
    verdict_counts=(("win", 20), ("blocked", 30), ("fork", 40)),
    unique_counts=(70, 20),
)

STTT = Game(
    name="sTTT",
    labels="ABCDEFGHIJKLMNOPQRSTUVWXY",
    # A B C D E
    # F G H I J
    # K L M N O
    # P Q R S T
    # U V W X Y
    winning_sets=(
        # 16 unit squares (2x2 blocks), corners clockwise from top left
        "ABGF", "BCHG", "CDIH", "DEJI",
        "FGLK", "GHML", "HINM", "IJON",
        "KLQP", "LMRQ", "MNSR", "NOTS",
        "PQVU", "QRWV", "RSXW", "STYX",
        # 9 diagonal squares of side sqrt(2): the four neighbours of an interior point,
        # listed west, north, east, south (FBHL surrounds G)
        "FBHL", "GCIM", "HDJN",
        "KGMQ", "LHNR", "MIOS",
        "PLRV", "QMSW", "RNTX",
    ),
    symmetries=(
        "ABCDEFGHIJKLMNOPQRSTUVWXY", "AFKPUBGLQVCHMRWDINSXEJOTY",
        "EDCBAJIHGFONMLKTSRQPYXWVU", "EJOTYDINSXCHMRWBGLQVAFKPU",
        "UPKFAVQLGBWRMHCXSNIDYTOJE", "UVWXYPQRSTKLMNOFGHIJABCDE",
        "YTOJEXSNIDWRMHCVQLGBUPKFA", "YXWVUTSRQPONMLKJIHGFEDCBA",
    ),
    move_counts=(6, 7),
    verdict_counts=(("win", 30), ("blocked", 30), ("fork", 60)),
    unique_counts=(90, 30),
)

GAMES: dict[str, Game] = {g.name: g for g in (OTTT, DTTT, CTTT, STTT)}


def get_game(name: str) -> Game:
    try:
        return GAMES[name]
    except KeyError:
        raise ValueError(f"unknown TTT game {name!r}; expected one of {', '.join(GAMES)}") from None


def bits(mask: int):
    """The single-bit masks of `mask`, lowest first."""
    while mask:
        low = mask & -mask
        yield low
        mask ^= low
