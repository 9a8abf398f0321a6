"""`reasonrl distill-draft` against a vision-language target: online distillation of an EagleVLM draft
with the elastic visual compressor on shapes-world VQA prompts, evaluated after every epoch."""

import json

import pytest
import torch

from reasonrl.engine.spec.distill import DistillConfig
from reasonrl.engine.spec.distill_vlm import vlm_distillation_loss
from reasonrl.engine.spec.draft import DraftHead
from reasonrl.models.loader import load_model
from reasonrl.models.tiny_vlm import make_vlm_checkpoint, make_vlm_tokenizer
from reasonrl.vision.spec.compressor import CompressorConfig
from tests.models.vlm_common import CORPUS, images_prompt


@pytest.fixture(scope="module")
def vlm_ckpt(tmp_path_factory):
    tok = make_vlm_tokenizer(CORPUS, vocab_size=384)
    return make_vlm_checkpoint(tmp_path_factory.mktemp("vlm") / "policy", tok, seed=2, std=0.2), tok


def test_distill_draft_on_images_trains_draft_and_compressor_only_and_reports_each_epoch(vlm_ckpt, tmp_path):
    from reasonrl.cli import main

    ckpt, _ = vlm_ckpt
    before = {k: v.clone() for k, v in load_model(ckpt, "cpu").state_dict().items()}
    files_before = sorted(p.name for p in ckpt.iterdir())
    out = tmp_path / "draft"
    assert main(["distill-draft", str(ckpt), "--out", str(out), "--env", "shapes:?image_size=112&max_objects=3",
                 "--compressor", "select", "--epochs", "2", "--prompts-per-step", "2", "--num-prompts", "4",
                 "--eval-prompts", "2", "--max-new-tokens", "6", "--lr", "1e-2"]) == 0
    log = [json.loads(line) for line in (out / "distill_log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in log] == [1, 2] and all(row["accepted_length"] >= 1 for row in log)
    table = (out / "accepted_length.md").read_text()
    assert table.count("\n") == 4 and (out / "accepted_length.png").stat().st_size > 1000
    assert sorted(p.name for p in out.iterdir()) == ["accepted_length.md", "accepted_length.png", "distill_log.jsonl",
                                                     "draft.safetensors", "draft_config.json"]
    target = load_model(ckpt, "cpu")
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())  # frozen, nothing written there
    assert sorted(p.name for p in ckpt.iterdir()) == files_before
    draft = DraftHead.load(out, target)
    assert draft.compressor is not None and draft.compressor.config.mode == "select"
    fresh = DraftHead(target, CompressorConfig())
    assert not torch.equal(draft.compressor.gate.weight, fresh.compressor.gate.weight)  # the gate learned
    assert not torch.equal(draft.compressor.conv.weight, fresh.compressor.conv.weight) or \
        not torch.equal(draft.compressor.queries, fresh.compressor.queries)  # and a branch did


def test_vlm_loss_reaches_draft_and_compressor_but_not_the_target(vlm_ckpt):
    ckpt, tok = vlm_ckpt
    target = load_model(ckpt, "cpu")
    target.requires_grad_(False)
    draft = DraftHead(target, CompressorConfig(mode="weighted"))
    prompts = [images_prompt(tok, target.vlm_config, [(56, 84)], seed=1), images_prompt(tok, target.vlm_config, [(84, 84)], seed=2)]
    seqs = [p.input_ids + [5, 6, 7] for p in prompts]
    t = max(map(len, seqs))
    ids = torch.tensor([s + [0] * (t - len(s)) for s in seqs])
    loss, parts = vlm_distillation_loss(draft, ids, torch.tensor([len(s) for s in seqs]), DistillConfig(feature_noise=0),
                                        None, prompts)
    loss.backward()
    assert torch.isfinite(loss) and 0 <= parts["top1"] <= 1
    assert draft.fc.weight.grad.abs().sum() > 0 and draft.compressor.gate.weight.grad.abs().sum() > 0
    assert draft.compressor.conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in target.parameters())


def test_gate_target_is_the_cheapest_branch_that_pays_for_its_rows():
    from reasonrl.engine.spec.distill_vlm import cheapest

    # branches: pool (a third of the rows), resampler (a few), text_only (none)
    costs = torch.tensor([[1 / 3, 0.05, 0.0]] * 3)
    losses = torch.tensor([[0.100, 0.100, 0.100],    # the image does not help: no rows
                           [0.090, 0.100, 0.100],    # pooled rows save 10%, more than their 1.7% charge
                           [0.0995, 0.0999, 0.100]])  # they save 0.5%, less than it: still no rows
    assert cheapest(losses, costs, 0.05).tolist() == [2, 0, 2]
    assert cheapest(losses, costs, 0.0).tolist() == [0, 0, 0]  # uncharged, ties go to the first branch


def test_select_gate_is_supervised_by_forced_branches_and_learns_its_targets(vlm_ckpt):
    ckpt, tok = vlm_ckpt
    target = load_model(ckpt, "cpu")
    target.requires_grad_(False)
    draft = DraftHead(target, CompressorConfig(mode="select"))
    prompts = [images_prompt(tok, target.vlm_config, [(56, 84)], seed=s) for s in range(4)]
    seqs = [p.input_ids + [5 + s, 6, 7] for s, p in enumerate(prompts)]
    t = max(map(len, seqs))
    ids = torch.tensor([s + [0] * (t - len(s)) for s in seqs])
    lengths = torch.tensor([len(s) for s in seqs])
    cfg = DistillConfig(feature_noise=0, gate_cost=10.0)  # so dear that text-only is every sequence's target
    opt = torch.optim.SGD(draft.compressor.gate.parameters(), lr=1.0)
    for _ in range(30):
        loss, parts = vlm_distillation_loss(draft, ids, lengths, cfg, None, prompts)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert draft.compressor.forced is None  # every forced pass undone
    assert parts["gate_text_only_target"] == 1.0 and parts["gate_agrees"] == 1.0
    draft.eval()
    with torch.no_grad():
        assert draft.compressor.choose(torch.zeros(target.config.hidden_size)) == "text_only"
    # off: the Gumbel-softmax alone, no supervision reported
    _, parts = vlm_distillation_loss(draft, ids, lengths, DistillConfig(feature_noise=0, gate_weight=0), None, prompts)
    assert "gate_ce" not in parts


def test_forcing_a_branch_overrides_the_gate_and_names_bad_branches():
    from reasonrl.vision.spec.compressor import VisualCompressor

    comp = VisualCompressor(16, 2, CompressorConfig(branches=("pool", "text_only"))).eval()
    x, q = torch.randn(12, 16), torch.randn(16)
    with comp.force("text_only"):
        assert comp(x, q)[0].shape == (0, 16)
    with comp.force("pool"):
        assert comp(x, q)[0].shape == (4, 16)
    with pytest.raises(ValueError, match="'conv'"):
        with comp.force("conv"):
            pass
    assert comp.forced is None
    concat = VisualCompressor(16, 2, CompressorConfig(mode="concat", branches=("pool", "resampler"))).eval()
    with concat.force("resampler"):  # in any mode
        assert concat(x, q)[0].shape == (2, 16)


def test_negative_gate_knobs_are_refused_by_name(tmp_path, capsys):
    from reasonrl.cli import main

    with pytest.raises(ValueError, match="distill: gate_cost must be a finite number >= 0"):
        DistillConfig(gate_cost=-0.1)
    assert main(["distill-draft", "unused", "--out", str(tmp_path / "d"), "--gate-weight", "-1"]) == 2
    assert "gate_weight must be a finite number >= 0" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
