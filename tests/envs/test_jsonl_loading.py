"""JSONL datasets as environments and environment specs (reasonrl/envs/jsonl.py, registry.py)."""

import json
import logging
import time

import pytest

from reasonrl.envs import registry
from reasonrl.envs.base import Environment, Prompt
from reasonrl.envs.jsonl import (
    AnswerEnvironment, JsonlError, JsonlSchema, choice_letter, choice_reward, exact_reward, load_jsonl, read_jsonl)
from reasonrl.envs.math import MATH_SYSTEM_PROMPT, MathEnvironment
from reasonrl.envs.registry import load_environment, register_environment


def write(path, lines):
    path.write_bytes(b"\n".join(line if isinstance(line, bytes) else line.encode() for line in lines) + b"\n")
    return path


GOOD = [
    json.dumps({"question": "1+1?", "answer": "2", "uid": "a", "level": 1}),
    json.dumps({"question": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2?"}],
                "answer": 4, "uid": 7}),
]
BAD = {  # line number in the file below -> (field named, words in the message)
    3: (None, "not valid JSON"),
    4: (None, "JSON object"),
    5: ("question", "missing"),
    6: ("answer", "must be"),
    7: ("answer", "must be"),
    8: ("question", "end with a user message"),
    9: ("uid", "repeats id 'a'"),
    10: (None, "not valid JSON"),
    11: ("question", "non-empty string"),
}


@pytest.fixture
def mixed(tmp_path):
    return write(tmp_path / "mixed.jsonl", GOOD + [
        '{"question": "3+3?", "answer": ',  # 3: truncated JSON
        json.dumps(["a", "list"]),  # 4
        json.dumps({"answer": "1", "uid": "c"}),  # 5: no prompt
        json.dumps({"question": "x?", "answer": {"value": 1}, "uid": "d"}),  # 6: answer of the wrong type
        json.dumps({"question": "x?", "answer": True, "uid": "e"}),  # 7: a bool is not an answer
        json.dumps({"question": [{"role": "assistant", "content": "hi"}], "answer": "1", "uid": "f"}),  # 8
        json.dumps({"question": "again", "answer": "1", "uid": "a"}),  # 9: duplicate id
        b'{"question": "\xff\xfe", "answer": "1"}',  # 10: not UTF-8
        json.dumps({"question": "   ", "answer": "1", "uid": "g"}),  # 11: blank prompt
        "",  # blank lines are not rows
        json.dumps({"question": "5*5?", "answer": "25", "uid": "h"}),  # 13: good
    ])


def test_good_rows_become_prompts(mixed):
    schema = JsonlSchema(prompt="question", answer="answer", id="uid", metadata=("level",))
    prompts, errors = read_jsonl(mixed, schema)
    assert [p.id for p in prompts] == ["a", "7", "h"]
    assert prompts[0].messages == [{"role": "system", "content": MATH_SYSTEM_PROMPT},
                                   {"role": "user", "content": "1+1?"}]
    assert prompts[0].metadata == {"level": 1, "line": 1} and prompts[2].metadata == {"line": 13}
    assert prompts[1].messages[0] == {"role": "system", "content": "Be terse."}  # chat prompts as given
    assert prompts[1].answer == 4
    assert len(errors) == len(BAD)


def test_bad_rows_are_reported_with_line_and_field_and_skipped(mixed, caplog):
    with caplog.at_level(logging.WARNING):
        env = load_jsonl(mixed, prompt="question", answer="answer", id="uid")
    assert isinstance(env, MathEnvironment) and len(env.prompts()) == 3
    assert {e.line: e.field for e in env.skipped} == {line: field for line, (field, _) in BAD.items()}
    for error in env.skipped:
        assert BAD[error.line][1] in error.message, str(error)
        assert str(error).startswith(f"{mixed}:{error.line}:")
    assert f"{mixed}:5: field 'question': is missing" in caplog.text
    env.close()


def test_strict_mode_names_file_line_and_field(mixed):
    with pytest.raises(JsonlError) as info:
        load_jsonl(mixed, prompt="question", answer="answer", id="uid", strict=True)
    assert str(info.value).startswith(f"{mixed}:3:") and info.value.error.line == 3
    good_then_bad = write(mixed.parent / "late.jsonl", GOOD[:1] + [json.dumps({"question": "q", "answer": [1]})])
    with pytest.raises(JsonlError, match=r"late\.jsonl:2: field 'answer': must be a string or a number"):
        load_jsonl(good_then_bad, prompt="question", strict=True)
    empty = write(mixed.parent / "empty.jsonl", [json.dumps({"question": "q", "answer": ["?", "yes"]})])
    with pytest.raises(JsonlError, match=r"empty\.jsonl:1: field 'answer': '\?' normalizes to nothing"):
        load_jsonl(empty, prompt="question", reward="exact", strict=True)


def test_a_file_without_good_rows_fails(tmp_path):
    with pytest.raises(ValueError, match="no valid rows"):
        load_jsonl(write(tmp_path / "bad.jsonl", ["{", "[]"]))


def test_schema_is_validated():
    with pytest.raises(ValueError, match="reward"):
        JsonlSchema(reward="bleu")
    with pytest.raises(ValueError, match="choices"):
        JsonlSchema(reward="exact", choices="options")


def test_exact_reward():
    assert exact_reward("The capital is... Answer: **Paris.**", "paris") == 1.0
    assert exact_reward("\\boxed{\\text{New  York}}", "new york") == 1.0
    assert exact_reward("ＰＡＲＩＳ", "Paris") == 1.0  # NFKC: full-width letters
    assert exact_reward("Lyon", ["Paris", "Lutetia"]) == 0.0
    assert exact_reward("Lutetia", ["Paris", "Lutetia"]) == 1.0
    assert exact_reward("42", 42) == 1.0
    assert exact_reward("<think>Paris?</think>Answer: Rome", "Rome", think="</think>") == 1.0
    assert exact_reward("<think>Answer: Rome", "Rome", think="</think>") == 0.0  # delimiter absent
    assert exact_reward("", "?") == exact_reward("   ", ["...", "Paris"]) == 0.0  # nothing said matches nothing


def test_exact_and_choice_rewards_are_bounded():
    """The "Answer:" line was read whole and unbounded: a megabyte of "*." took 10 s per reward, so these
    8 MB would take minutes (the bound is a loaded machine's, far above what they take now)."""
    hostile = "Answer: " + "*." * 4_000_000
    start = time.perf_counter()
    assert exact_reward(hostile, "Paris") == choice_reward(hostile, "B") == 0.0
    assert time.perf_counter() - start < 60
    assert exact_reward("Answer: " + "a" * 2000, "a" * 2000) == 0.0  # an answer longer than a box may be


@pytest.mark.parametrize(
    "response, score",
    [("Answer: B", 1.0), ("Answer: (B)", 1.0), ("\\boxed{B}", 1.0), ("The answer is B. Paris", 1.0),
     ("\\boxed{\\text{(B)}}", 1.0), ("b", 1.0), ("(B)", 1.0), ("The answer is b", 1.0),
     ("Answer: C", 0.0), ("I think B", 0.0), ("Answer: Both", 0.0), ("", 0.0)],
)
def test_choice_reward(response, score):
    assert choice_reward(response, "B") == score


def test_choice_reads_the_last_answer_clause_and_refuses_hedges():
    """A comma, semicolon or CJK stop after the letter hid it, an earlier "Answer:" cue was read as "I",
    and "A or B" / \\boxed{A B C D} were credited with A."""
    for said in ("Answer: C, because the others fail.", "The answer is C; B is wrong.", "Answer: C\u3002",
                 "Answer: I believe the answer is C", "Answer: C! Clearly.", "\\boxed{C. Paris}", "Answer: C, I think"):
        assert choice_reward(said, "C") == 1.0, said
    for hedge in ("Answer: A or B", "\\boxed{A B C D}", "Answer: A, B, C or D", "Answer: A/B", "Answer: A and maybe B"):
        assert choice_reward(hedge, "A") == 0.0, hedge
    assert choice_reward("Answer: (C) I and II only", "C") == 1.0  # "I" before a lowercase word is not option I
    assert choice_reward("Answer: (B) Vitamin C", "B") == 1.0  # an option's own text may hold a capital
    for said, letter in (("Answer: D) A and B", "D"), ("The answer is (D) A and B only", "D"),  # option text naming letters
                         ("Answer: B (A is wrong)", "B"), ("The answer is (B) and not (C)", "B"),
                         ("The answer is B rather than A", "B")):
        assert choice_reward(said, letter) == 1.0, said
    assert choice_reward("Answer: (A) or (B)", "A") == 0.0


def test_choice_rows_render_options(tmp_path):
    path = write(tmp_path / "mc.jsonl", [
        json.dumps({"q": "Capital of France?", "options": ["Rome", "Paris"], "label": "(b)"}),
        json.dumps({"q": "Pick one", "options": ["x", "y"], "label": "C"}),  # C is past 2 choices
        json.dumps({"q": "Pick one", "options": "xy", "label": "A"}),
    ])
    env = load_jsonl(path, prompt="q", answer="label", reward="choice", choices="options")
    assert isinstance(env, AnswerEnvironment)
    (prompt,) = env.prompts()
    assert prompt.answer == "B" and prompt.messages[-1]["content"].endswith("Capital of France?\n\nA. Rome\nB. Paris")
    assert [(e.line, e.field) for e in env.skipped] == [(2, "label"), (3, "options")]
    assert env.reward(prompt, "Answer: B") == 1.0 and env.reward(prompt, "Answer: A") == 0.0


def test_system_prompt_options(tmp_path):
    path = write(tmp_path / "s.jsonl", [json.dumps({"prompt": "hi", "answer": "x"}),
                                        json.dumps({"prompt": [{"role": "user", "content": "yo"}], "answer": "y"})])
    default = load_jsonl(path, reward="exact").prompts()
    assert default[0].messages[0]["role"] == "system" and len(default[1].messages) == 1
    custom = load_jsonl(path, reward="exact", system="Be brief.").prompts()
    assert custom[0].messages[0]["content"] == "Be brief." and custom[1].messages[0]["content"] == "Be brief."
    assert [m["role"] for m in load_jsonl(path, reward="exact", system="").prompts()[0].messages] == ["user"]


# --- specs ------------------------------------------------------------------------------------


def test_jsonl_spec(mixed):
    env = load_environment(f"jsonl:{mixed}?prompt=question&answer=answer&reward=exact&id=uid&metadata=level,x")
    assert isinstance(env, AnswerEnvironment) and env.name == "mixed"
    assert [p.id for p in env.prompts()] == ["a", "7", "h"] and env.prompts()[0].metadata == {"level": 1, "line": 1}
    assert env.reward(env.prompts()[2], "Answer: 25") == 1.0
    with pytest.raises(JsonlError, match=":3:"):
        load_environment(f"jsonl:{mixed}?prompt=question&id=uid&strict=true")
    think = load_environment(f"jsonl:{mixed}?prompt=question&reward=exact&think=%3C/think%3E&name=t")
    assert think.think == "</think>" and think.name == "t"


@pytest.mark.parametrize(
    "spec, message",
    [("jsonl:x.jsonl?promt=q", "unknown option 'promt'"), ("jsonl:x.jsonl?prompt=a&prompt=b", "twice"),
     ("jsonl:x.jsonl?strict=maybe", "strict"), ("jsonl:x.jsonl?prompt", "key=value"), ("jsonl:", "no path"),
     ("jsonl:x.jsonl?reward=bleu", "reward"), ("nope:x", "unknown environment 'nope'"),
     ("math:x.jsonl?reward=exact", "reward=math"), ("arith:?n=0", "n >= 1"), ("arith:?size=3", "unknown option")],
)
def test_bad_specs_say_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=message):
        load_environment(spec)


def test_math_and_arith_specs(tmp_path):
    path = write(tmp_path / "m.jsonl", [json.dumps({"problem": "1/2+1/2?", "answer": "1"}),
                                        json.dumps({"question": "?", "answer": "1"})])
    env = load_environment(f"math:{path}")
    assert isinstance(env, MathEnvironment) and len(env.prompts()) == 1 and env.skipped[0].field == "problem"
    assert env.reward(env.prompts()[0], "\\boxed{1}") == 1.0
    renamed = load_environment(f"math:{path}?prompt=question")
    assert renamed.prompts()[0].messages[-1]["content"] == "?"
    arith = load_environment("arith:?n=7&seed=2&digits=3")
    assert isinstance(arith, MathEnvironment) and len(arith.prompts()) == 7


class _Echo(Environment):
    name = "echo"

    def __init__(self, argument):
        self.argument = argument

    def prompts(self, n=None, seed=0, split="train"):
        return [Prompt(id="0", messages=[{"role": "user", "content": self.argument}])]

    def score(self, prompt, response):
        return float(response == self.argument)


def test_registration_hook(monkeypatch):
    monkeypatch.setattr(registry, "ENVIRONMENTS", dict(registry.ENVIRONMENTS))
    register_environment("echo", _Echo)
    assert load_environment("echo:oTTT").argument == "oTTT"
    register_environment("lazy", f"{__name__}:_Echo")  # "module:factory", imported on first use
    assert load_environment("lazy").argument == ""
    with pytest.raises(ValueError):
        register_environment("bad name", _Echo)


@pytest.mark.parametrize("reference, response, reward", [
    ("5", "Answer: .5", 0.0), (".5", "Answer: 5", 0.0), ("5", "Answer: 5!", 0.0),  # scored 1.0: edges stripped
    ("5", "Answer: 5.", 1.0), ("0.5", "Answer: .5", 1.0), ("5", "Answer: 5.0", 1.0), ("Paris", "Answer: Paris!", 1.0)])
def test_exact_keeps_a_decimal_point_and_a_factorial_and_compares_numbers_by_value(reference, response, reward):
    assert exact_reward(response, reference) == reward


def test_a_last_box_too_long_is_no_answer_in_the_exact_and_choice_rewards_too():
    """A policy could state an answer, then open a box and ramble: the answer cue before it was read."""
    ramble = "\\boxed{" + "x" * 1500
    assert exact_reward("Answer: 5\n" + ramble, "5") == 0.0 and exact_reward("Answer: 5\n", "5") == 1.0
    assert choice_letter("The answer is B.\n" + ramble) is None and choice_letter("The answer is B.") == "B"


@pytest.mark.parametrize("response", ["Answer: Option B", "The answer is option B.", "Answer: choice (B)"])
def test_choice_reads_the_letter_after_option(response):
    assert choice_letter(response) == "B"


@pytest.mark.parametrize("spec, named", [
    ("sums:?max_trems", "key=value"), ("sums:?max_terms=", "max_terms must be an integer"),
    ("sums:?p=nan", "p is a probability"), ("sums:?p=2", "p is a probability"),
    ("sums:?max_terms=5&max_terms=7", "max_terms is given twice"), ("sums:?terms=5", "unknown option 'terms'"),
    ("arith:?n=5&n=6", "n is given twice"), ("letter:?x=1", "letter:"), ("letter:a,b", "letter:")])
def test_spec_typos_repeats_and_bad_values_are_refused_by_name(spec, named):
    """`sums:` dropped an option without `=`, took a blank value as the default, the last of a repeated
    option, and any p; `letter:` took any text as its letters."""
    with pytest.raises(ValueError, match=named):
        load_environment(spec)
