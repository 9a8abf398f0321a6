"""PRMs with confidence features (`PRMConfig.confidence`): the head also reads the lowest and mean
log-probability a frozen copy of the base model gives each step's tokens, on the response as written."""

import json

import pytest
import torch

from reasonrl.models import load_model
from reasonrl.models.loader import CheckpointError
from reasonrl.models.tiny import make_checkpoint, make_tokenizer
from reasonrl.models.tiny_vlm import make_vlm_checkpoint, make_vlm_tokenizer
from reasonrl.models.tokenizer import Tokenizer
from reasonrl.reward.prm.model import CONFIDENCE_DIR, PRMConfig, from_backbone, load_prm, save_prm
from reasonrl.reward.prm.scoring import PRMScorer
from reasonrl.reward.prm.steps import StepFormat
from reasonrl.reward.prm.train import Example, PRMTrainConfig, train_phase

CORPUS = ["Add: 4 + 7 + 2", "4+7=11 11+2=13 \\boxed{13}", "9+8=17 17+9=26 \\boxed{26}"] * 50
PROMPT = [{"role": "user", "content": "Add: 4 + 7 + 2"}]
SOLUTION = "4+7=11 11+2=13 \\boxed{13}"


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    tok = make_tokenizer(CORPUS, vocab_size=300)
    return make_checkpoint(tmp_path_factory.mktemp("conf") / "policy", tokenizer=tok, hidden_size=64, num_layers=2,
                           std=0.2)


def confidence_prm(policy, **cfg):
    backbone, tok = load_model(policy, device="cpu", dtype=torch.float32), Tokenizer.from_dir(policy)
    return from_backbone(backbone, tok, PRMConfig(confidence=True, steps=StepFormat(delimiter=" "), **cfg), seed=1), tok


def test_features_are_the_base_models_log_probs_of_the_response_as_written(policy):
    prm, tok = confidence_prm(policy)
    scorer = PRMScorer(prm, tok)
    steps = SOLUTION.split(" ")
    enc = scorer.encode(PROMPT, steps)
    prompt = scorer.prompt_input(PROMPT)
    # the policy's own tokens, not the steps tokenized one by one (" \\" straddles the last step's start)
    assert enc.plain == prompt + tok.encode(SOLUTION, add_special_tokens=False)
    assert prm.separator_id not in enc.plain
    base = load_model(policy, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        ids = torch.tensor([enc.plain])
        logp = base.compute_logits(base.forward_padded(ids)[0, :-1]).float().log_softmax(-1)
        token_logp = logp[torch.arange(len(enc.plain) - 1), ids[0, 1:]]  # log p(token t) at index t - 1
    response = tok.encode(SOLUTION, add_special_tokens=False)
    chars, at = [], 0  # each response token's characters, from its own text
    for token in response:
        n = len(tok.decode([token], skip_special_tokens=False))
        chars.append((at, at + n))
        at += n
    expected, cursor = [], 0
    for step in steps:  # a step's tokens: those overlapping its characters
        lo = SOLUTION.index(step, cursor)
        hi = cursor = lo + len(step)
        seg = token_logp[[len(prompt) + k - 1 for k, (a, b) in enumerate(chars) if a < hi and b > lo]]
        expected.append([seg.min().item(), seg.mean().item()])
    features = scorer.confidence([enc])
    assert features.shape == (3, 2)
    assert torch.allclose(features, torch.tensor(expected), atol=1e-5)


def test_the_head_reads_the_features_and_the_reference_stays_frozen(policy, tmp_path):
    prm, tok = confidence_prm(policy)
    scorer = PRMScorer(prm, tok)
    items = [(PROMPT, SOLUTION), (PROMPT, "4+7=12 12+2=14 \\boxed{14}")]
    before = [s.scores for s in scorer.score(items)]
    reference = {k: v.clone() for k, v in prm.reference.state_dict().items()}
    backbone = {k: v.clone() for k, v in prm.backbone.state_dict().items()}
    data = [Example(scorer.encode(PROMPT, s.split(" ")), [1.0, 0.0, 0.0]) for _, s in items]
    train_phase(scorer, data, PRMTrainConfig(lr=1e-2, samples_per_step=2, warmup_steps=1), epochs=4)
    assert all(torch.equal(v, prm.reference.state_dict()[k]) for k, v in reference.items())
    assert any(not torch.equal(v, prm.backbone.state_dict()[k]) for k, v in backbone.items())
    assert not prm.reference.training
    trained = [s.scores for s in scorer.score(items)]
    assert trained != before
    # the features enter the score: a different reference model, the same backbone and head, other scores
    with torch.no_grad():
        for p in prm.reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert [s.scores for s in scorer.score(items)] != trained


def test_save_and_load_keep_the_reference_and_refuse_a_missing_one(policy, tmp_path):
    prm, tok = confidence_prm(policy)
    path = save_prm(prm, tmp_path / "prm", tok)
    assert json.loads((path / "prm_config.json").read_text())["confidence"] is True
    assert (path / CONFIDENCE_DIR / "config.json").is_file()
    again, tok2 = load_prm(path, device="cpu")
    items = [(PROMPT, SOLUTION), (PROMPT, "\\boxed{13}")]
    for a, b in zip(PRMScorer(again, tok2).score(items), PRMScorer(prm, tok).score(items)):
        assert a.scores == pytest.approx(b.scores, abs=1e-6)
    for f in (path / CONFIDENCE_DIR).iterdir():
        f.unlink()
    (path / CONFIDENCE_DIR).rmdir()
    with pytest.raises((CheckpointError, FileNotFoundError), match=CONFIDENCE_DIR):
        load_prm(path, device="cpu")


@pytest.mark.parametrize("response", ["", "no-delimiter", "\x00 garbage <|step|> <|im_end|> x", "1+1=2 " * 300,
                                      "\ud800 lone \udfff surrogates", "a  b"])
def test_untrusted_responses_score_without_raising(policy, response):
    prm, tok = confidence_prm(policy, max_len=256, max_step_tokens=4)
    [out] = PRMScorer(prm, tok).score([(PROMPT, response)])
    assert all(0.0 <= s <= 1.0 for s in out.scores) and out.seen <= len(out.steps)


def test_a_vision_language_backbone_is_refused(tmp_path):
    tok = make_vlm_tokenizer(CORPUS, vocab_size=384)
    path = make_vlm_checkpoint(tmp_path / "vlm", tok, seed=2, std=0.2)
    backbone, tok = load_model(path, device="cpu", dtype=torch.float32), Tokenizer.from_dir(path)
    with pytest.raises(ValueError, match="vision-language"):
        from_backbone(backbone, tok, PRMConfig(confidence=True), seed=0)


def test_the_reference_reads_what_the_prm_reads_of_a_long_step(policy):
    """The plain response held every character of a step cut to max_step_tokens for the PRM: a long
    step cost the reference many times what it cost the PRM (20,077 tokens against 800)."""
    prm, tok = confidence_prm(policy, max_step_tokens=3)
    scorer = PRMScorer(prm, tok)
    enc = scorer.encode(PROMPT, ["4+7=11" * 40, "11+2=13", "\\boxed{13}"])
    assert enc.positions[0] == len(scorer.prompt_input(PROMPT)) + 3  # the PRM read 3 tokens of the first step
    a, z = enc.spans[0]
    assert z - a <= 4 and len(enc.plain) <= len(enc.ids) + len(enc.positions)
    # the reference reads each step as far as the PRM does, joined as the policy writes them
    prompt, cuts = len(scorer.prompt_input(PROMPT)), [len(scorer.prompt_input(PROMPT)) - 1] + enc.positions
    seen = [tok.decode(enc.ids[lo + 1:hi], skip_special_tokens=False) for lo, hi in zip(cuts, cuts[1:])]
    assert seen[0] == "4+7" and tok.decode(enc.plain[prompt:], skip_special_tokens=False) == " ".join(seen)
    assert enc.length == max(len(enc.ids), len(enc.plain))


def test_a_step_with_no_token_looks_like_a_uniform_guess_not_a_certainty(policy):
    prm, tok = confidence_prm(policy)
    scorer = PRMScorer(prm, tok)
    enc = scorer.encode(PROMPT, ["4+7=11", "<|step|>", "11+2=13"])  # the middle step is the separator's text
    features = scorer.confidence([enc])
    guess = -torch.log(torch.tensor(float(prm.reference.config.vocab_size)))
    assert torch.allclose(features[1], guess.expand(2)) and (features[[0, 2]] > guess - 50).all()
    assert scorer.confidence([enc]) is not features and torch.equal(scorer.confidence([enc]), features)  # kept


def test_tag_steps_are_read_inside_their_tags(policy):
    prm, tok = confidence_prm(policy)
    prm.cfg.steps = StepFormat(split="tags")
    scorer = PRMScorer(prm, tok)
    enc = scorer.encode(PROMPT, ["4+7=11", "11+2=13"])
    text = tok.decode(enc.plain[len(scorer.prompt_input(PROMPT)):], skip_special_tokens=False)
    assert text == "<step>4+7=11</step><step>11+2=13</step>"
    for (a, z), step in zip(enc.spans, ["4+7=11", "11+2=13"]):
        assert step in tok.decode(enc.plain[a:z], skip_special_tokens=False)


def test_one_forward_per_prefix_scores_as_the_batched_pass(policy):
    """`reasonrl bench prm`'s naive arm kept every step's features for a one-step position: it raised."""
    from reasonrl.bench.prm import _naive
    prm, tok = confidence_prm(policy)
    scorer = PRMScorer(prm, tok)
    steps = SOLUTION.split(" ")
    [batched] = scorer.score([(PROMPT, SOLUTION)])
    assert _naive(scorer, [(PROMPT, steps)])[0] == pytest.approx(batched.scores, abs=1e-5)
