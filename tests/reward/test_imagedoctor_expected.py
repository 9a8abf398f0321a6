"""Expected scores (expected.py): each score read as the mean of the judge's digit probabilities
where it wrote the score. A stand-in judge whose next-token logits depend only on the last two
tokens fixes every probability, so each value is computed here by hand."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from reasonrl.models.tokenizer import Tokenizer
from reasonrl.reward.imagedoctor.expected import expected_scores, score_places
from reasonrl.reward.imagedoctor.judgement import render_judgement

TOK = Tokenizer.from_dir("reasonrl/demo/vlm")
D = [TOK.encode(str(d), add_special_tokens=False)[0] for d in range(10)]
DOT, SPACE = TOK.encode(".", add_special_tokens=False)[0], TOK.encode(" ", add_special_tokens=False)[0]
SCORES = {"alignment": 0.75, "aesthetics": 1.0, "plausibility": 0.3, "overall": 0.5}


def logits_for(*pairs: tuple[int, float]) -> torch.Tensor:
    """Vocabulary logits: -30 everywhere but the given (token, logit) pairs."""
    out = torch.full((TOK.vocab_size + 64,), -30.0)
    for token, value in pairs:
        out[token] = value
    return out


# the judge: (previous token, token) -> its logits for the next token; anything else: flat
TABLE = {
    (SPACE, None): logits_for((D[0], 1.0), (D[1], 0.0), (D[5], 9.0)),  # the integer digit; "5" must be ignored
    (D[0], DOT): logits_for((D[7], 2.0), (D[3], 1.0)),  # first decimal after "0."
    (D[1], DOT): logits_for((D[0], 5.0)),  # after "1." (what the "0." branch must not read)
    (DOT, D[7]): logits_for((D[5], 0.0), (D[6], 0.0)),  # second decimal after "0.7"
    (DOT, D[3]): logits_for((D[0], 3.0)),  # second decimal after "0.3"
    (DOT, D[5]): logits_for((D[2], 0.0)),  # after "0.5"
}


class TwoTokenJudge:
    """forward_padded returns each row's (previous, current) token ids as its "hidden state"; lm_head
    looks them up in TABLE (a previous token that is a space stands for every score's integer digit)."""

    def __init__(self):
        self.backbone = SimpleNamespace(forward_padded=self.forward_padded, lm_head=self.lm_head)
        self.rows = 0

    def forward_padded(self, ids, prompts):
        self.rows += ids.shape[0]
        prev = torch.cat([torch.full((ids.shape[0], 1), -1), ids[:, :-1]], 1)
        return torch.stack([prev, ids], -1).float()

    def lm_head(self, pair):
        prev, cur = (int(x) for x in pair)
        if cur == SPACE:
            return TABLE[SPACE, None]
        return TABLE.get((prev, cur), torch.zeros(TOK.vocab_size + 64))


def softmax(*logits):
    e = np.exp(np.array(logits) - max(logits))
    return e / e.sum()


def response(scores=SCORES) -> list[int]:
    return TOK.encode(render_judgement(scores, [(1, 2, 3, 4)], "A red circle."), add_special_tokens=False)


def test_each_score_is_the_mean_of_its_digits_along_the_zero_branch():
    prompt = SimpleNamespace(input_ids=[5, 6, 7])
    [got] = expected_scores(TwoTokenJudge(), TOK, [prompt], [response()])
    p0, p1 = softmax(1.0, 0.0)  # over 0 and 1 only
    # alignment, written 0.75: the first decimal over {7: 2, 3: 1, others -30}, the second after "0.7"
    d1 = softmax(2.0, 1.0) @ np.array([7, 3])
    d2 = 5.5
    assert got["alignment"] == pytest.approx(p1 + p0 * (0.1 * d1 + 0.01 * d2), abs=1e-5)
    # aesthetics, written 1.00: the "0." branch is run; its most likely first decimal is 7, so "0.7" sets the second
    assert got["aesthetics"] == pytest.approx(p1 + p0 * (0.1 * d1 + 0.01 * d2), abs=1e-5)
    # plausibility, written 0.30: the greedy first decimal is 3, but its distribution is the same as above
    assert got["plausibility"] == pytest.approx(p1 + p0 * (0.1 * d1 + 0.01 * 0.0), abs=1e-5)
    # overall, written 0.50: second decimal read after "0.5"
    assert got["overall"] == pytest.approx(p1 + p0 * (0.1 * d1 + 0.01 * 2.0), abs=1e-5)


def test_a_batch_gives_what_each_judgement_gives_alone():
    judge = TwoTokenJudge()
    prompts = [SimpleNamespace(input_ids=[5] * n) for n in (3, 9)]
    responses = [response(), response({"alignment": 1.0, "aesthetics": 0.25, "plausibility": 1.0, "overall": 0.0})]
    together = expected_scores(judge, TOK, prompts, responses, batch=2)
    alone = [expected_scores(judge, TOK, [p], [r])[0] for p, r in zip(prompts, responses)]
    assert together == alone


def test_unreadable_scores_stay_unread_and_other_forms_keep_their_written_value():
    text = render_judgement(SCORES, [], "ok").replace("Aesthetic score: 1.00", "Aesthetic score: 0.8").replace(
        "Plausibility score: 0.30", "Plausibility score: 1.7")
    written, places = score_places(TOK, TOK.encode(text, add_special_tokens=False))
    assert set(places) == {"alignment", "overall"} and written["aesthetics"] == 0.8 and written["plausibility"] is None
    [got] = expected_scores(TwoTokenJudge(), TOK, [SimpleNamespace(input_ids=[1])], [TOK.encode(text, add_special_tokens=False)])
    assert got["aesthetics"] == 0.8 and got["plausibility"] is None and got["alignment"] != 0.75
    # a score outside the answer block is not read, garbage reads as nothing, and nothing is run for it
    judge = TwoTokenJudge()
    garbage = TOK.encode("Semantic Alignment score: 0.75; <answer>", add_special_tokens=False)
    assert expected_scores(judge, TOK, [SimpleNamespace(input_ids=[1])], [garbage]) == [dict.fromkeys(SCORES)]
    assert judge.rows == 0


def test_the_digit_rows_are_where_the_judgement_wrote_them():
    written, places = score_places(TOK, ids := response())
    assert written == SCORES
    for aspect, at in places.items():
        assert TOK.decode(ids[at:at + 4]) == f"{SCORES[aspect]:.2f}"


def test_a_real_judge_gives_scores_in_the_unit_interval(tmp_path):
    from reasonrl.models.chat import ChatEncoder
    from reasonrl.reward.imagedoctor.build import doctor_from_vlm
    from reasonrl.reward.imagedoctor.decoder import HeatmapConfig
    from reasonrl.reward.imagedoctor.export import judge_messages

    head = HeatmapConfig(dim=16, heads=2, mlp_dim=16, conv_channels=(8, 8), up_channels=(8, 4), mask_in_chans=4)
    judge, tok = doctor_from_vlm("reasonrl/demo/vlm", head)
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    prompt = ChatEncoder(tok, judge.backbone)(judge_messages("a red circle", image))
    [got] = expected_scores(judge.eval(), tok, [prompt], [response()])
    assert set(got) == set(SCORES) and all(0.0 <= v <= 1.0 for v in got.values())
    assert len({round(v, 6) for v in got.values()}) > 1  # read from the model, not copied from the text


def test_digits_are_read_from_the_answer_the_parser_read():
    """Past MAX_CHARS the parser reads the first answer block; the digits must come from that one too."""
    text = ("<answer>Semantic Alignment score: 0.10;</answer><think>" + "x " * 10000 +
            "</think><answer>Semantic Alignment score: 0.90;</answer>")
    ids = TOK.encode(text, add_special_tokens=False)
    written, places = score_places(TOK, ids)
    assert written["alignment"] == 0.1
    assert "alignment" not in places or TOK.decode(ids[places["alignment"]:places["alignment"] + 4]) == "0.10"


class SplitDigits:
    """The demo tokenizer, but writing every digit as two tokens (as some tokenizers group digits)."""

    def __getattr__(self, name):
        return getattr(TOK, name)

    def encode(self, text, add_special_tokens=True):
        ids = TOK.encode(text, add_special_tokens=add_special_tokens)
        return ids + ids if text.isdigit() else ids


def test_a_tokenizer_without_one_token_digits_keeps_the_written_scores():
    judge = TwoTokenJudge()
    [got] = expected_scores(judge, SplitDigits(), [SimpleNamespace(input_ids=[1])], [response()])
    assert got == SCORES and judge.rows == 0
