"""Process rewards in RL: step scores -> per-token advantages (DeepSeekMath's process supervision)."""

import pytest

from reasonrl.models.tokenizer import Tokenizer
from reasonrl.reward.prm.process import ProcessRewardConfig, process_advantages, step_token_ends
from reasonrl.reward.prm.steps import StepFormat, split_steps


def test_step_ends_map_to_the_token_that_completes_each_step():
    tok = Tokenizer.from_dir("reasonrl/demo/policy")
    text = "4+7=11 11+2=13 \\boxed{13}"
    ids = tok.encode(text, add_special_tokens=False) + list(tok.eos_token_ids[:1])
    steps = split_steps(text, StepFormat(delimiter=" "))
    ends = step_token_ends(tok.decode, ids, [s.end for s in steps])
    assert ends == sorted(ends) and ends[-1] == len(ids) - 2  # the box ends just before EOS
    for s, k in zip(steps, ends):
        assert len(tok.decode(ids[:k + 1])) >= s.end > len(tok.decode(ids[:k]))


def test_a_step_ending_in_a_character_split_across_tokens_ends_at_its_last_byte():
    """An incomplete UTF-8 sequence decodes to one U+FFFD, so a prefix reached the step's length a
    token or more before the step's last character was complete."""
    tok = Tokenizer.from_dir("reasonrl/demo/policy")
    for text in ["\U0001f9ee\U0001f9ee\U0001f9ee x", "a\U0001f9ee b", "\u4e2d\u4e2d\u4e2d\u4e2d x y"]:
        ids = tok.encode(text, add_special_tokens=False)
        steps = split_steps(text, StepFormat(delimiter=" "))
        ends = step_token_ends(tok.decode, ids, [s.end for s in steps])
        for s, k in zip(steps, ends):
            assert tok.decode(ids[:k + 1]).startswith(text[:s.end]), (text, s.text)
            assert not tok.decode(ids[:k]).startswith(text[:s.end])


def _reference_step_token_ends(decode, ids, char_ends):
    """The definition, decoding every prefix from token 0 (quadratic): the first k whose prefix text
    agrees with the whole text up to the step's end."""
    full = decode(ids)
    return [next((k for k in range(len(ids)) if decode(ids[:k + 1])[:end] == full[:end]), len(ids) - 1)
            for end in char_ends]


def test_step_ends_match_the_prefix_by_prefix_definition():
    tok = Tokenizer.from_dir("reasonrl/demo/policy")
    texts = ["4+7=11 11+2=13 \\boxed{13}", "Step 1.\n\nStep 2: \u00e9 \u00fc \u00df\n\n\\boxed{3}",
             "a\U0001f9ee\U0001f9ee b \u65e5\u672c \u8a9e", "  lead  spaces  "]
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False) + list(tok.eos_token_ids[:1])
        for delimiter in (" ", "\n\n"):
            ends = [s.end for s in split_steps(text, StepFormat(delimiter=delimiter))]
            assert step_token_ends(tok.decode, ids, ends) == _reference_step_token_ends(tok.decode, ids, ends), text
    lead = tok.encode("\U0001f9ee", add_special_tokens=False)[0]  # a 4-byte character's first byte alone
    garbage = [lead] * 20 + tok.encode(" x y", add_special_tokens=False)  # every prefix ends in U+FFFD
    ends = [1, 5, 20, 23]
    assert step_token_ends(tok.decode, garbage, ends) == _reference_step_token_ends(tok.decode, garbage, ends)


class CountingDecode:
    """A tokenizer's decode that counts the tokens it is given."""

    def __init__(self, decode):
        self.decode, self.tokens = decode, 0

    def __call__(self, ids):
        self.tokens += len(ids)
        return self.decode(ids)


def test_mapping_step_ends_is_linear_in_the_response():
    """Each step used to bisect over prefixes decoded from token 0: 16k tokens of `1 ` took 12 s."""
    tok = Tokenizer.from_dir("reasonrl/demo/policy")
    text = "1 " * 1000
    ids = tok.encode(text, add_special_tokens=False)
    decode = CountingDecode(tok.decode)
    ends = step_token_ends(decode, ids, [s.end for s in split_steps(text, StepFormat(delimiter=" "))])
    assert ends == list(range(0, len(ids), 2))
    assert decode.tokens <= 6 * len(ids)


def _reward_reading_two_steps(decode):
    """A ProcessReward whose PRM reads 2 steps at most and calls each of them "right"."""
    from types import SimpleNamespace

    from reasonrl.reward.prm.process import ProcessReward
    from reasonrl.reward.prm.scoring import StepScores

    class Scorer:
        cfg = SimpleNamespace(steps=StepFormat(delimiter=" "))

        def score_steps(self, items):
            return [StepScores(list(steps), [0.9] * min(2, len(steps)) + [0.0] * (len(steps) - 2), min(2, len(steps)))
                    for _, steps in items]

    reward = object.__new__(ProcessReward)
    reward.cfg, reward.scorer, reward.decode = ProcessRewardConfig(coef=1.0), Scorer(), decode
    return reward


def test_step_ends_are_mapped_through_the_decoding_the_response_text_had(monkeypatch):
    """An environment that keeps special tokens in its responses' text (LVR's markers) had its steps
    cut from that text and mapped back through a decoding that dropped them: offsets slid, and
    the last steps piled onto the final token."""
    from reasonrl.reward.prm import model, scoring
    from reasonrl.reward.prm.process import ProcessReward

    class Tok:
        def decode(self, ids, skip_special_tokens=True):
            return "".join("<|m|>" if i == 0 else chr(i) for i in ids if i or not skip_special_tokens)

    monkeypatch.setattr(model, "load_prm", lambda *a, **k: (None, None))
    monkeypatch.setattr(scoring, "PRMScorer", lambda *a, **k: None)
    text = "ab<|m|>cd"
    ids = [ord("a"), ord("b"), 0, ord("c"), ord("d")]
    keeps = ProcessReward(ProcessRewardConfig(prm="p"), Tok(), special_tokens=True)
    assert keeps.decode(ids) == text
    assert step_token_ends(keeps.decode, ids, [2, len(text)]) == [1, 4]
    assert ProcessReward(ProcessRewardConfig(prm="p"), Tok()).decode(ids) == "abcd"


def _char_samples(texts):
    from types import SimpleNamespace

    return [SimpleNamespace(response_text=t, response_ids=[ord(c) for c in t], group_id=0,
                            prompt=SimpleNamespace(messages=[])) for t in texts]


def _chars(ids):
    return "".join(map(chr, ids))


def test_steps_the_prm_did_not_read_get_no_process_advantage():
    """Steps past the PRM's max_len score 0.0 as a placeholder; read as "wrong" they gave a long
    response large negative advantages on a tail the PRM never saw."""
    reward = _reward_reading_two_steps(_chars)
    long, short = reward.advantages(_char_samples(["a b c d", "a b"]), [0.0, 0.0])
    assert long == [0.0] * 7 and short == [0.0] * 3  # every read step scored alike: nothing to tell apart


def test_only_the_steps_the_prm_read_are_mapped_to_tokens():
    """Mapping the unread tail too made a long response's cost grow with steps the PRM never saw."""
    decode = CountingDecode(_chars)
    reward = _reward_reading_two_steps(decode)
    text = "a " * 2000
    reward.advantages(_char_samples([text]), [0.0])
    assert decode.tokens <= len(text) + 20  # the whole response once, then the two steps' few tokens


def test_process_advantages_are_group_normalised_suffix_sums():
    # one group, two samples: A has steps scoring 1.0 then 0.0 (tokens 0-1, 2-3), B one step of 0.5 (tokens 0-2)
    out = process_advantages([[1.0, 0.0], [0.5]], [[1, 3], [2]], [5, 4], [0, 0], eps=0.0)
    # group mean 0.5, std 0.5: normalised A = (+1, -1), B = (0)
    assert out[0] == pytest.approx([0.0, 0.0, -1.0, -1.0, 0.0])  # first step: +1 - 1; second: -1; after: 0
    assert out[1] == pytest.approx([0.0, 0.0, 0.0, 0.0])
    # groups are normalised separately; a group with equal scores gets no process advantage
    other = process_advantages([[0.9, 0.1], [0.3, 0.3]], [[0, 1], [0, 1]], [2, 2], [0, 1])
    assert other[1] == [0.0, 0.0] and other[0][1] < 0 < other[0][0] + 1
    assert process_advantages([[]], [[]], [3], [0]) == [[0.0, 0.0, 0.0]]


def test_bad_coefficient_is_refused():
    with pytest.raises(ValueError, match="coef"):
        ProcessRewardConfig(coef=float("nan"))


class Spy:
    """The policy update, recording the advantages it is given."""

    def __init__(self, update, seen, key):
        self.update, self.seen, self.key = update, seen, key

    def __getattr__(self, name):
        return getattr(self.update, name)

    def __call__(self, samples, advantages, version):
        self.seen[self.key] = (samples, advantages)
        return self.update(samples, advantages, version)


def _trainer(tmp_path, prm_dir, coef):
    from reasonrl.envs.sums import SumsEnvironment
    from reasonrl.models import load_model
    from reasonrl.rl.config import load_config
    from reasonrl.rl.trainer import Trainer

    cfg = load_config(None, {"model.path": "reasonrl/demo/policy", "train.run_dir": str(tmp_path / f"run{coef}"),
                             "env.name": "sums:?max_terms=4", "env.eval_size": 4, "rollout.max_tokens": 48,
                             "rollout.prompts_per_step": 2, "rollout.samples_per_prompt": 4, "engine.kv_cache_memory": 1 << 24,
                             "process.prm": str(prm_dir), "process.coef": coef})
    return Trainer(cfg, SumsEnvironment(max_terms=4), load_model("reasonrl/demo/policy", device="cpu"),
                   Tokenizer.from_dir("reasonrl/demo/policy"), console=False)


@pytest.mark.slow
def test_train_step_with_a_process_reward(tmp_path):
    from reasonrl.reward.prm.model import PRMConfig, save_prm
    from reasonrl.reward.prm.run import new_prm

    scorer = new_prm("reasonrl/demo/policy", PRMConfig(steps=StepFormat(delimiter=" ")), "cpu", seed=1)
    prm_dir = save_prm(scorer.prm, tmp_path / "prm", scorer.tokenizer)
    seen = {}
    for coef in (0.0, 1.0):
        trainer = _trainer(tmp_path, prm_dir, coef)
        trainer.update = Spy(trainer.update, seen, coef)
        stats = trainer.train_step()
        assert stats["grad_norm"] >= 0
    for coef, (samples, adv) in seen.items():
        assert [len(a) for a in adv] == [len(s.response_ids) for s in samples]
    flat = seen[0.0][1]
    assert all(len(set(a)) == 1 for a in flat)  # coef 0: the outcome advantage on every token
    assert any(len(set(a)) > 1 for a in seen[1.0][1])  # the PRM's steps vary along a response
