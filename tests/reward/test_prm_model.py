"""The PRM: a separator after every step, a head there; HF directory save/load; batched scoring
that equals one-at-a-time scoring; untrusted responses score without raising; a Qwen2.5-VL backbone."""

import copy
import json
import math

import pytest
import torch

from reasonrl.envs.shapes import ShapesVQAConfig, ShapesVQAEnvironment
from reasonrl.models import load_model
from reasonrl.models.loader import CheckpointError
from reasonrl.models.tiny import make_checkpoint, make_tokenizer
from reasonrl.models.tiny_vlm import make_vlm_checkpoint, make_vlm_tokenizer
from reasonrl.models.tokenizer import Tokenizer
from reasonrl.reward.prm.model import PRMConfig, from_backbone, load_prm, save_prm
from reasonrl.reward.prm.scoring import PRMScorer, aggregate
from reasonrl.reward.prm.steps import StepFormat

CORPUS = ["Add: 4 + 7 + 2", "4+7=11 11+2=13 \\boxed{13}", "9+8=17 17+9=26 \\boxed{26}"] * 50
SOLUTIONS = ["4+7=11 11+2=13 \\boxed{13}", "4+7=12 \\boxed{12}", "\\boxed{13}", "1+1=2 2+2=4 4+4=8 8+8=16 \\boxed{16}"]


@pytest.fixture(scope="module")
def prm_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prm")
    tok = make_tokenizer(CORPUS, vocab_size=300)
    path = make_checkpoint(tmp / "policy", tokenizer=tok, hidden_size=64, num_layers=2, std=0.2)
    backbone, tok = load_model(path, device="cpu", dtype=torch.float32), Tokenizer.from_dir(path)
    prm = from_backbone(backbone, tok, PRMConfig(steps=StepFormat(delimiter=" ")), seed=1)
    return save_prm(prm, tmp / "prm", tok)


def test_separator_added_and_round_trip(prm_dir):
    prm, tok = load_prm(prm_dir, device="cpu")
    assert tok.tok.token_to_id("<|step|>") == prm.separator_id < prm.backbone.config.vocab_size
    assert json.loads((prm_dir / "prm_config.json").read_text())["steps"]["delimiter"] == " "
    again, _ = load_prm(save_prm(prm, prm_dir.parent / "again", tok), device="cpu")
    items = [("Add: 4 + 7 + 2", s) for s in SOLUTIONS]
    assert PRMScorer(prm, tok).score(items)[0].scores == PRMScorer(again, tok).score(items)[0].scores


def test_one_score_per_step_at_its_separator(prm_dir):
    prm, tok = load_prm(prm_dir, device="cpu")
    scorer = PRMScorer(prm, tok)
    [out] = scorer.score([("Add: 4 + 7 + 2", SOLUTIONS[0])])
    assert out.steps == ["4+7=11", "11+2=13", "\\boxed{13}"] and out.seen == 3
    enc = scorer.encode("Add: 4 + 7 + 2", out.steps)
    assert [enc.ids[p] for p in enc.positions] == [prm.separator_id] * 3
    # a step's score only depends on the text up to its separator (causal): the prefix scores the same
    [prefix] = scorer.score([("Add: 4 + 7 + 2", "4+7=11 11+2=13")])
    assert prefix.scores == pytest.approx(out.scores[:2], abs=1e-5)


def test_batched_scores_equal_single_scores(prm_dir):
    prm, tok = load_prm(prm_dir, device="cpu")
    items = [("Add: 4 + 7 + 2", s) for s in SOLUTIONS] + [("Add: 1 + 1 + 2 + 4 + 8", SOLUTIONS[3])]
    together = PRMScorer(prm, tok).score(items)
    alone = [PRMScorer(prm, tok, max_tokens_per_batch=1).score([it])[0] for it in items]
    for a, b in zip(together, alone):
        assert a.scores == pytest.approx(b.scores, abs=1e-5)
    assert len({round(s, 6) for t in together for s in t.scores}) > 3  # a random head still separates inputs


@pytest.mark.parametrize("response, steps", [
    ("no-delimiter-at-all", 1), ("", 0), ("   ", 0), ("a  b", 2),
    ("\x00\ufffd garbage <|step|> <|im_end|>", 4), ("1+1=2 " * 400, 400),
    ("\ud800 lone \udfff surrogates", 4),  # JSON escapes; the tokenizer raised on them
])
def test_untrusted_responses_score_without_raising(prm_dir, response, steps):
    prm, tok = load_prm(prm_dir, device="cpu")
    prm.cfg.max_len, prm.cfg.max_step_tokens = 256, 4
    [out] = PRMScorer(prm, tok).score([("Add: 1 + 1", response)])
    assert len(out.scores) == steps and all(0.0 <= s <= 1.0 for s in out.scores)
    assert out.seen <= steps and all(s == 0.0 for s in out.scores[out.seen:])
    assert math.isfinite(aggregate(out.scores, "min"))
    enc = PRMScorer(prm, tok).encode("Add: 1 + 1", out.steps)  # the separator's text is never a separator
    assert enc.ids.count(prm.separator_id) == len(enc.positions) == out.seen


@pytest.mark.parametrize("wrap", [
    lambda text: text,
    lambda text: [{"role": "user", "content": text}],
    lambda text: [{"role": "user", "content": [{"type": "text", "text": text}]}],
])
def test_a_lone_surrogate_in_the_prompt_is_read_as_a_question_mark(prm_dir, wrap):
    """Text prompts were made valid UTF-8, chat messages were not: the tokenizer raised TypeError."""
    prm, tok = load_prm(prm_dir, device="cpu")
    [out, clean] = PRMScorer(prm, tok).score([(wrap("Add: 4 + 7 \ud800"), "4+7=11"), (wrap("Add: 4 + 7 ?"), "4+7=11")])
    assert out.seen == 1 and out.scores == pytest.approx(clean.scores, abs=1e-5)


def test_long_step_is_cut(prm_dir):
    prm, tok = load_prm(prm_dir, device="cpu")
    prm.cfg.max_step_tokens = 3
    enc = PRMScorer(prm, tok).encode("Add: 1", ["1+1=2" * 50, "x"])
    assert enc.positions[1] - enc.positions[0] == 2 and len(enc.positions) == 2


class _SpyTokenizer:
    """The tokenizer's `tok`, recording the longest text each encode_batch call is given."""

    def __init__(self, tok):
        self.tok, self.longest = tok, []

    def encode_batch(self, texts, **kwargs):
        self.longest.append(max(map(len, texts)))
        return self.tok.encode_batch(texts, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tok, name)


def test_a_huge_step_is_sliced_before_it_is_tokenized(prm_dir):
    """A whole step was tokenized before being cut to max_step_tokens: a 10 MB one-step response took 25 s."""
    prm, tok = load_prm(prm_dir, device="cpu")
    prm.cfg.max_step_tokens = 3
    steps = ["1+1=2" * 40_000, "x", "4+7=11 11+2=13"]
    scorer = PRMScorer(prm, tok)
    spy = copy.copy(tok)
    spy.tok = _SpyTokenizer(tok.tok)
    scorer.tokenizer = spy
    enc = scorer.encode("Add: 1", steps)
    longest_token = max(map(len, tok.tok.get_vocab(with_added_tokens=True)))
    assert max(spy.tok.longest) <= 2 * 4 * longest_token < len(steps[0])  # 2 x (max_step_tokens + 1) tokens' worth
    # the same tokens as tokenizing every step whole, then cutting it
    whole = [[t for t in tok.tok.encode(s, add_special_tokens=False).ids if t != prm.separator_id][:3] for s in steps]
    assert enc.ids == scorer.prompt_input("Add: 1") + [t for w in whole for t in w + [prm.separator_id]]


def test_aggregations():
    s = [0.9, 0.5, 0.8]
    assert aggregate(s, "min") == 0.5 and aggregate(s, "last") == 0.8
    assert aggregate(s, "mean") == pytest.approx(2.2 / 3) and aggregate(s, "product") == pytest.approx(0.36)
    assert aggregate([], "min") == 0.0
    with pytest.raises(ValueError, match="aggregation"):
        aggregate(s, "max")


def test_corrupt_prm_directories_are_refused(prm_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="prm_config.json"):
        load_prm(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in prm_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "prm_config.json").write_text(json.dumps({"separator": "<|nope|>"}))
    with pytest.raises(CheckpointError, match="separator"):
        load_prm(bad)


def test_qwen2_5_vl_backbone_scores_image_prompts(tmp_path):
    env = ShapesVQAEnvironment(ShapesVQAConfig(image_size=84, max_objects=3))
    prompts = env.prompts(2)
    tok = make_vlm_tokenizer(CORPUS, vocab_size=384)
    path = make_vlm_checkpoint(tmp_path / "vlm", tok, seed=2, std=0.2)
    backbone = load_model(path, device="cpu", dtype=torch.float32)
    tok = Tokenizer.from_dir(path)
    prm = from_backbone(backbone, tok, PRMConfig(), seed=0)
    prm, tok = load_prm(save_prm(prm, tmp_path / "vlm_prm", tok), device="cpu")
    items = [(p.messages, "There are 2 squares.\n\nSo \\boxed{2}") for p in prompts]
    out = PRMScorer(prm, tok).score(items)
    assert [len(o.scores) for o in out] == [2, 2] and out[0].scores != out[1].scores  # the images differ
    alone = PRMScorer(prm, tok, max_tokens_per_batch=1).score(items[1:])[0]
    assert alone.scores == pytest.approx(out[1].scores, abs=1e-5)


def test_a_prompt_is_encoded_once_for_all_its_responses_and_never_when_no_step_could_follow(prm_dir):
    """The server's scoring rendered and tokenized a request's prompt again for each of its responses: one
    1 MB prompt with 64 responses held a preparing thread for a minute, and chat completions waited."""
    prm, tok = load_prm(prm_dir, device="cpu")
    scorer, calls = PRMScorer(prm, tok), []
    encode_prompt = scorer.prompt_input
    scorer.prompt_input = lambda prompt: calls.append(prompt) or encode_prompt(prompt)
    messages = [{"role": "user", "content": "Add: 4 + 7 + 2"}]
    together = scorer.score([(messages, s) for s in SOLUTIONS])
    assert len(calls) == 1
    for out, solution in zip(together, SOLUTIONS):
        assert out.scores == pytest.approx(PRMScorer(prm, tok).score([(messages, solution)])[0].scores, abs=1e-5)
    huge = [{"role": "user", "content": "7 " * (3 * prm.cfg.max_len * scorer.longest_token)}]
    [out] = scorer.score([(huge, SOLUTIONS[0])])
    assert len(calls) == 1 and out.seen == 0 and out.steps == ["4+7=11", "11+2=13", "\\boxed{13}"]
