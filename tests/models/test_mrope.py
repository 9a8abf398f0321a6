"""M-RoPE positions, rotary bands, vision layout and prompt slicing, on hand-computed cases."""

import pytest
import torch

from reasonrl.models.config import ModelConfig
from reasonrl.models.qwen2_5_vl import expand_image_tokens, mrope_positions, text_positions
from reasonrl.models.qwen2_5_vl.layout import Segments, patch_positions, window_order
from reasonrl.models.qwen2_5_vl.prompt import MultimodalPrompt
from reasonrl.models.rope import Rotary
from reasonrl.models.tiny import tiny_config

IMG = 99


def test_text_image_text_positions():
    # a b [image: grid 1 x 4 x 6 patches -> 2 x 3 merged] c d
    ids = [1, 2] + [IMG] * 6 + [3, 4]
    pos, delta = mrope_positions(ids, torch.tensor([[1, 4, 6]]), IMG)
    assert pos.tolist() == [[0, 1, 2, 2, 2, 2, 2, 2, 5, 6],
                            [0, 1, 2, 2, 2, 3, 3, 3, 5, 6],
                            [0, 1, 2, 3, 4, 2, 3, 4, 5, 6]]
    assert delta == 7 - 10  # the next token (index 10) sits at 7
    assert text_positions(10, 12, delta).tolist() == [[7, 8]] * 3


def test_adjacent_images_split_by_their_grids():
    ids = [IMG] * 4 + [IMG] * 2 + [5]  # 2 x 2 merged, then 1 x 2 merged, no text between
    pos, delta = mrope_positions(ids, torch.tensor([[1, 4, 4], [1, 2, 4]]), IMG)
    assert pos.tolist() == [[0, 0, 0, 0, 2, 2, 4], [0, 0, 1, 1, 2, 2, 4], [0, 1, 0, 1, 2, 3, 4]]
    assert delta == 5 - 7


def test_placeholder_and_grid_mismatches_raise():
    with pytest.raises(ValueError, match="needs 6 placeholder tokens at index 1, the prompt has 4"):
        mrope_positions([1] + [IMG] * 4 + [2], torch.tensor([[1, 4, 6]]), IMG)
    with pytest.raises(ValueError, match="no image_grid_thw row left"):
        mrope_positions([IMG] * 2, None, IMG)
    with pytest.raises(ValueError, match="1 image_grid_thw row"):
        mrope_positions([1, 2], torch.tensor([[1, 2, 2]]), IMG)
    with pytest.raises(ValueError, match="2 image placeholder.*1 image"):
        expand_image_tokens([IMG, 1, IMG], torch.tensor([[1, 2, 2]]), IMG, 2)


def test_equal_rows_are_plain_rope_and_text_models_refuse_rows():
    cfg = tiny_config("qwen2")
    mrope = ModelConfig.from_dict({**cfg.raw, "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}})
    assert mrope.mrope_section == (2, 3, 3) and mrope.rope_scaling is None
    positions = torch.tensor([0, 5, 17, 300])
    plain = Rotary(cfg)(positions, torch.float32)
    rows = Rotary(mrope)(positions.expand(3, -1), torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(plain, rows))
    # distinct rows rotate bands 0-1 by t, 2-4 by h, 5-7 by w
    cos, _ = Rotary(mrope)(torch.tensor([[1], [2], [3]]), torch.float32)
    inv = Rotary(cfg).inv_freq
    expected = torch.cat([1 * inv[:2], 2 * inv[2:5], 3 * inv[5:]]).cos()
    torch.testing.assert_close(cos[0, 0, :8], expected)
    with pytest.raises(ValueError, match="M-RoPE"):
        Rotary(cfg)(positions.expand(3, -1), torch.float32)


def test_vision_layout():
    # 4 x 4 patches, merge 2 -> 2 x 2 merged tokens; block-major patch order
    pos = patch_positions(torch.tensor([[1, 4, 4]]), 2)
    assert pos[:8].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1], [0, 2], [0, 3], [1, 2], [1, 3]]
    # 3 x 5 merged tokens in 2 x 2 windows, row-major over windows; then a 1 x 1 image
    order, lengths = window_order(torch.tensor([[1, 6, 10], [1, 2, 2]]), 2, 2)
    assert order[:4].tolist() == [0, 1, 5, 6] and order[4:8].tolist() == [2, 3, 7, 8]
    assert lengths == [16, 16, 8, 8, 8, 4, 4]  # patches of windows 2x2, 2x2, 2x1 | 1x2, 1x2, 1x1 | image 2
    assert sorted(order.tolist()) == list(range(16))


def test_segments_attend_within_segments_only():
    torch.manual_seed(0)
    q, k, v = (torch.randn(7, 2, 4) for _ in range(3))
    seg = Segments.from_lengths([3, 4], torch.device("cpu"))
    out = seg.attend(q, k, v)
    for lo, hi in [(0, 3), (3, 7)]:
        ref = torch.nn.functional.scaled_dot_product_attention(*(x[lo:hi].transpose(0, 1) for x in (q, k, v)))
        torch.testing.assert_close(out[lo:hi], ref.transpose(0, 1))


def test_prompt_slices_for_chunked_prefill():
    ids = [1, 2] + [IMG] * 6 + [3, 4]
    positions, delta = mrope_positions(ids, torch.tensor([[1, 4, 6]]), IMG)
    mm = MultimodalPrompt(ids, torch.zeros(24, 1176), torch.tensor([[1, 4, 6]]), positions, delta,
                          torch.arange(2, 8))
    rows, k0, k1 = mm.image_rows_in(4, 9)
    assert rows.tolist() == [0, 1, 2, 3] and (k0, k1) == (2, 6)
    assert mm.image_rows_in(8, 12)[1:] == (6, 6)
    assert torch.equal(mm.positions_for(6, 13), torch.cat([positions[:, 6:], text_positions(10, 13, delta)], dim=1))
