"""SMARLI's structured mask, element by element, on hand-built layouts (overlapping boxes included)."""

import pytest
import torch

from reasonrl.vision.smarli.mask import Segments, build_mask, cell_cover

# positions: prompt 0 1 2 (slot 3 padding) | object A 4 5 6, object B 7 8 (slot 9 padding) | image 10 11 12 13
SEG = Segments(prompt_len=3, prompt_slots=4, object_lens=(3, 2), layout_slots=6, num_image=4)
# 2 x 2 image grid: A covers cells 0 and 1, B covers cells 1 and 3: they overlap on cell 1; cell 2 is nobody's
COVER = torch.tensor([[1, 1, 0, 0], [0, 1, 0, 1]], dtype=torch.bool)
PROMPT, A, B, IMAGE = [0, 1, 2], [4, 5, 6], [7, 8], [10, 11, 12, 13]


def allowed(mask: torch.Tensor) -> dict[int, set[int]]:
    return {q: set(torch.nonzero(mask[q]).flatten().tolist()) for q in range(mask.shape[0])}


def test_structured_mask_every_row():
    expected = {
        0: {0}, 1: {0, 1}, 2: {0, 1, 2},            # prompt: causal text, nothing else
        3: {3},                                     # padding sees itself only
        4: {*PROMPT, 4}, 5: {*PROMPT, 4, 5}, 6: {*PROMPT, 4, 5, 6},  # A: rule 1, rule 2, rule 3
        7: {*PROMPT, 7}, 8: {*PROMPT, 7, 8},        # B: never sees A
        9: {9},
        10: {*PROMPT, *A, *IMAGE},                  # cell 0: A's box only
        11: {*PROMPT, *A, *B, *IMAGE},              # cell 1: the overlap, both objects
        12: {*PROMPT, *IMAGE},                      # cell 2: no box, no layout
        13: {*PROMPT, *B, *IMAGE},                  # cell 3: B's box only
    }
    assert allowed(build_mask(SEG, COVER, "structured")) == expected


def test_no_isolation_drops_rules_3_and_4():
    expected = {
        0: {0}, 1: {0, 1}, 2: {0, 1, 2}, 3: {3},
        4: {*PROMPT, 4}, 5: {*PROMPT, 4, 5}, 6: {*PROMPT, 4, 5, 6},
        7: {*PROMPT, *A, 7}, 8: {*PROMPT, *A, 7, 8},  # B now reads A (causally)
        9: {9},
        **{q: {*PROMPT, *A, *B, *IMAGE} for q in IMAGE},  # every image token reads every object
    }
    assert allowed(build_mask(SEG, COVER, "no_isolation")) == expected


def test_causal_is_one_lower_triangle_over_real_tokens():
    real = [*PROMPT, *A, *B, *IMAGE]
    got = allowed(build_mask(SEG, COVER, "causal"))
    for q in real:
        assert got[q] == {k for k in real if k <= q}
    assert got[3] == {3} and got[9] == {9}


def test_three_objects_nested_boxes():
    # C's box inside B's: cells of C see B and C, cells only B's see B alone
    seg = Segments(prompt_len=1, prompt_slots=1, object_lens=(1, 1, 1), layout_slots=3, num_image=4)
    cover = torch.tensor([[1, 0, 0, 0], [0, 1, 1, 1], [0, 0, 0, 1]], dtype=torch.bool)
    got = allowed(build_mask(seg, cover))
    assert got[4] == {0, 1, 4, 5, 6, 7}
    assert got[5] == got[6] == {0, 2, 4, 5, 6, 7}
    assert got[7] == {0, 2, 3, 4, 5, 6, 7}
    assert got[1] == {0, 1} and got[2] == {0, 2} and got[3] == {0, 3}


def test_cell_cover_counts_any_overlap():
    # a 4 x 4 grid of cells 0.25 wide; a box from 0.3 to 0.5 touches columns 1 only, rows 1 and 2 (0.2-0.6)
    cover = cell_cover(torch.tensor([[0.3, 0.2, 0.5, 0.6]]), 4).view(4, 4)
    assert cover.nonzero().tolist() == [[0, 1], [1, 1], [2, 1]]
    edge = cell_cover(torch.tensor([[0.25, 0.0, 0.5, 0.25]]), 4).view(4, 4)  # exactly one cell, edges excluded
    assert edge.nonzero().tolist() == [[0, 1]]


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="rules"):
        build_mask(SEG, COVER, "diagonal")
    with pytest.raises(ValueError, match="cover"):
        build_mask(SEG, COVER[:1], "structured")
    with pytest.raises(ValueError, match="slots"):
        Segments(prompt_len=5, prompt_slots=4, object_lens=(), layout_slots=0, num_image=1)
