"""SpecVLM's elastic visual compressor on its own: row counts, primitives, modes, the gate."""

import pytest
import torch

from reasonrl.vision.spec.compressor import CompressorConfig, VisualCompressor


def compressor(**kw):
    torch.manual_seed(0)
    return VisualCompressor(32, 4, CompressorConfig(**kw))


def test_primitives_shrink_by_their_ratio_and_text_only_drops_everything():
    c = compressor(ratio=4, num_queries=2)
    x = torch.randn(22, 32)
    assert c.prune(x, 4).shape == (6, 32) and c.pool(x, 4).shape == (6, 32) and c.conv_rows(x).shape == (6, 32)
    assert c.resample(x).shape == (2, 32) and c.branch("text_only", x).shape == (0, 32)
    torch.testing.assert_close(c.pool(x, 4)[0], x[:4].mean(0))
    torch.testing.assert_close(c.conv_rows(x[:20]), c.pool(x[:20], 4))  # conv starts as average pooling
    kept = c.prune(x, 4)
    assert torch.equal(kept, c.prune(x, 4))  # seeded: the same rows every time, in their order
    rows = [int((x == r).all(-1).nonzero()) for r in kept]
    assert rows == sorted(rows)
    for b in ("prune", "pool", "conv", "resampler", "text_only"):
        assert c.branch(b, x).shape[0] == c.output_rows(22, b)


def test_select_takes_the_top_gate_logit_at_inference_and_a_gumbel_sample_in_training():
    c = compressor(mode="select")
    x, q = torch.randn(12, 32), torch.randn(32)
    with torch.no_grad():
        c.gate.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0, 5.0]))  # text_only
    c.eval()
    out, branch = c(x, q)
    assert branch == "text_only" and out.shape == (0, 32) and c.choose(q) == "text_only"
    c.train()
    with torch.no_grad():
        c.gate.bias.zero_()
    picks = {c(x, q)[1] for _ in range(60)}
    assert len(picks) >= 4  # a uniform gate samples every branch
    with torch.no_grad():
        c.gate.bias[1] = 2.0  # pool
    out, branch = c(x, q)
    if branch != "text_only":
        out.sum().backward()
        assert c.gate.weight.grad is not None and c.gate.weight.grad.abs().sum() > 0  # straight-through


def test_weighted_mixes_same_ratio_branches_and_concat_stacks_granularities():
    c = compressor(mode="weighted", ratio=3)
    x, q = torch.randn(12, 32), torch.randn(32)
    out, label = c(x, q)
    expected = (c.prune(x, 3) + c.pool(x, 3) + c.conv_rows(x)) / 3  # a zero gate weighs them equally
    assert label == "weighted"
    torch.testing.assert_close(out, expected)
    c = compressor(mode="concat", coarse_ratio=6, ratio=3, num_queries=2)
    out, label = c(x, q)
    assert label == "concat" and out.shape[0] == 2 + 2 + 4 + 2 == c.output_rows(12, "concat")
    assert c.flops(12, "concat") > c.flops(12, "pool")


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="branches"):
        CompressorConfig(branches=("blur",))
    with pytest.raises(ValueError, match="weighted"):
        CompressorConfig(mode="weighted", branches=("resampler",))
    with pytest.raises(ValueError, match="ratio"):
        CompressorConfig(ratio=0)
