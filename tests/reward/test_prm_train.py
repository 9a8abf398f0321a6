"""PRM training: per-step cross-entropy learns exact step labels; ORM init and negative up-sampling;
ProcessBench metrics. Solutions are worked `sums` scratchpads with slips, so labels are exact."""

import random

import pytest
import torch

from reasonrl.envs.sums import SumsEnvironment, terms_of, worked
from reasonrl.reward.prm.judge import auc, first_wrong, processbench
from reasonrl.reward.prm.labels import solution_row
from reasonrl.reward.prm.model import PRMConfig, load_prm
from reasonrl.reward.prm.run import PRMTrainJob, judge, new_prm, read_rows, run_train
from reasonrl.reward.prm.scoring import PRMScorer
from reasonrl.reward.prm.steps import StepFormat
from reasonrl.reward.prm.train import PRMTrainConfig, examples, train_prm, upsample

SPACE = StepFormat(delimiter=" ")
POLICY = "reasonrl/demo/policy"


def sums_rows(n, split, seed=0, slip=0.25):
    env, rng = SumsEnvironment(max_terms=6), random.Random(seed)
    return [solution_row(env, p, worked(terms_of(p), rng, slip), SPACE, p.id) for p in env.prompts(n, seed, split)]


def test_processbench_metrics():
    exact = [[1, 1, 0, 0], [1, 1, 1], [0, 0]]
    assert first_wrong(exact[0]) == 2 and first_wrong(exact[1]) is None
    perfect = processbench([[0.9, 0.8, 0.1, 0.2], [0.7, 0.9, 0.6], [0.2, 0.1]], exact)
    assert perfect["f1"] == 1.0 and perfect["step_accuracy"] == 1.0 and perfect["step_auc"] == 1.0
    late = processbench([[0.9, 0.8, 0.9, 0.2], [0.7, 0.9, 0.6], [0.2, 0.1]], exact)  # one error found a step late
    assert late["erroneous_accuracy"] == 0.5 and late["correct_accuracy"] == 1.0 and late["f1"] == pytest.approx(2 / 3)
    assert processbench([[0.1] * 4, [0.1] * 3, [0.1] * 2], exact)["f1"] == 0.0  # "all wrong" is not rewarded
    assert auc([0.5, 0.5], [1, 0]) == 0.5 and auc([0.1, 0.9], [1, 0]) == 0.0


def test_an_empty_class_has_no_accuracy_and_no_f1():
    """With no correct (or no erroneous) solutions, a perfect PRM scored F1 0."""
    only_wrong = processbench([[0.9, 0.1]], [[1, 0]])
    assert only_wrong["erroneous_accuracy"] == 1.0 and only_wrong["correct_accuracy"] is None and only_wrong["f1"] is None
    only_right = processbench([[0.9, 0.8]], [[1, 1]])
    assert only_right["correct_accuracy"] == 1.0 and only_right["erroneous_accuracy"] is None and only_right["f1"] is None
    with pytest.raises(ValueError, match="one score per labelled step"):
        processbench([[0.9, 0.8]], [[1, 1, 0]])


def test_solutions_past_max_len_are_left_out_of_the_judgement():
    """Steps the PRM did not read score 0.0 as a placeholder: an all-correct long solution was
    judged erroneous at its first unread step."""
    scorer = new_prm(POLICY, PRMConfig(steps=SPACE, max_len=80), "cpu", seed=3)
    with torch.no_grad():  # a head that says "right" everywhere
        scorer.prm.score[-1].weight.zero_()
        scorer.prm.score[-1].bias.copy_(torch.tensor([-5.0, 5.0]))
    prompt = [{"role": "user", "content": "Add: 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1"}]
    long = [f"{i}+1={i + 1}" for i in range(1, 10)] + ["\\boxed{10}"]
    rows = [{"prompt": prompt, "steps": long, "exact": [1] * 10, "outcome": 1},
            {"prompt": prompt, "steps": long[:2], "exact": [1, 1], "outcome": 0},
            {"prompt": prompt, "steps": long[:2], "exact": [1, 0], "outcome": 0}]
    assert scorer.score_steps([(prompt, long)])[0].seen < 10
    metrics = judge(scorer, rows)
    assert metrics["unread"] == 1 and metrics["solutions"] == 2 and metrics["correct_accuracy"] == 1.0


@pytest.mark.timeout(120)  # the old code looped forever on the empty ORM data
def test_orm_init_with_no_outcome_label_in_reach_is_refused_not_a_hang():
    """The outcome label is on a solution's last step: with every solution longer than max_len the
    ORM phase had no data, and filling its first batch from an empty order never ended."""
    scorer = new_prm(POLICY, PRMConfig(steps=SPACE, max_len=80), "cpu")
    prompt = [{"role": "user", "content": "Add: 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1"}]
    steps = [f"{i}+1={i + 1}" for i in range(1, 10)] + ["\\boxed{10}"]
    rows = [{"prompt": prompt, "steps": steps, "exact": [1] * 10, "outcome": 1}]
    assert 0 < scorer.score_steps([(prompt, steps)])[0].seen < 10
    with pytest.raises(ValueError, match="ORM initialisation.*max_len \\(80 tokens\\).*orm_init_epochs to 0"):
        train_prm(scorer, rows, PRMTrainConfig(labels="exact", orm_init_epochs=1, samples_per_step=2))


@pytest.mark.parametrize("row, labels, error", [
    ({"steps": ["a"], "outcome": 1}, None, "missing prompt"),
    ({"prompt": "p", "steps": "a b", "outcome": 1}, None, "steps must be a list of strings"),
    ({"prompt": "p", "steps": ["a", "b"], "outcome": 1, "exact": [1]}, None, "exact must be one 0 or 1 per step"),
    ({"prompt": "p", "steps": ["a"], "outcome": 1, "exact": None}, "exact", "no exact step labels"),
    ({"prompt": "p", "steps": ["a"], "outcome": 1}, "consistent", "no weak completer outcomes"),
    ({"prompt": "p", "steps": ["a"], "outcome": 1, "mc": {"weak": [[1]]}}, "consistent", "no strong completer outcomes"),
    ({"prompt": "p", "steps": ["a", "b"], "outcome": 1, "mc": {"weak": [[1]]}}, "weak", "mc.weak must be one list"),
])
def test_bad_rows_are_named_by_line_and_field(tmp_path, row, labels, error):
    import json

    path = tmp_path / "rows.jsonl"
    path.write_text("\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=f"rows.jsonl:2: {error}"):
        read_rows(path, labels=labels)


def test_rows_may_hold_line_separators_inside_their_strings(tmp_path):
    import json

    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"prompt": "p", "steps": ["a\u2028b", "c\x85"], "outcome": 1}, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    assert read_rows(path)[0]["steps"] == ["a\u2028b", "c\x85"]


def test_upsampling_repeats_solutions_with_a_negative_step(tmp_path):
    scorer = new_prm(POLICY, PRMConfig(steps=SPACE), "cpu")
    data = examples(scorer, sums_rows(40, "train"), "exact")
    negative = sum(any(t == 0 for t in e.targets) for e in data)
    assert 0 < negative < len(data)
    assert len(upsample(data, 3)) == len(data) + 2 * negative
    orm = examples(scorer, sums_rows(5, "train"), "outcome")
    assert all(t is None for e in orm for t in e.targets[:-1]) and all(e.targets[-1] is not None for e in orm)


@pytest.mark.slow
def test_training_on_exact_labels_learns_step_correctness(tmp_path):
    train, held_out = sums_rows(120, "train"), sums_rows(40, "eval", seed=1)
    scorer = new_prm(POLICY, PRMConfig(steps=SPACE), "cpu")
    before = judge(scorer, held_out)
    history = train_prm(scorer, train, PRMTrainConfig(labels="exact", epochs=6, lr=3e-3, samples_per_step=16,
                                                      warmup_steps=5, orm_init_epochs=0.25, negative_upsample=2))
    after = judge(scorer, held_out)
    # the demo policy's digit-level tokenizer (re-shipped 2026-12-03) makes running totals several
    # tokens long: held-out ranking improves clearly in this budget, thresholded accuracy less so
    assert after["step_auc"] > before["step_auc"] + 0.08, (before, after)
    assert after["step_accuracy"] > before["step_accuracy"], (before, after)
    fifth = len(history["loss"]) // 5
    assert len(history["orm_loss"]) > 0 and sum(history["loss"][-fifth:]) < sum(history["loss"][:fifth])


def test_train_job_saves_a_prm_that_loads_and_scores_the_same(tmp_path):
    data, held = tmp_path / "train.jsonl", tmp_path / "held.jsonl"
    import json
    data.write_text("".join(json.dumps(r) + "\n" for r in sums_rows(40, "train")))
    held.write_text("".join(json.dumps(r) + "\n" for r in sums_rows(10, "eval")))
    job = PRMTrainJob(data=str(data), out=str(tmp_path / "prm"), eval_data=str(held), device="cpu")
    result = run_train(job, PRMConfig(steps=SPACE), PRMTrainConfig(labels="exact", epochs=1), log=lambda *a: None)
    prm, tok = load_prm(tmp_path / "prm", device="cpu", dtype=torch.float32)
    assert judge(PRMScorer(prm, tok), read_rows(held)) == pytest.approx(result["eval"])
    assert (tmp_path / "prm" / "train.json").is_file()


def test_a_rerun_refused_before_the_prm_is_saved_leaves_the_config_as_it_was(tmp_path, monkeypatch):
    """A started run's config was rewritten before a base that does not load, or data with no label
    the PRM sees, refused the rerun."""
    import json
    from dataclasses import replace

    import reasonrl.reward.prm.run as prm_run

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in sums_rows(8, "train")))
    job, quiet = PRMTrainJob(data=str(data), out=str(tmp_path / "prm"), device="cpu"), lambda *a: None

    def interrupted(*args):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:  # Ctrl-C while training: the run directory holds its config only
        m.setattr(prm_run, "train_prm", interrupted)
        with pytest.raises(KeyboardInterrupt, match="nothing was saved"):
            run_train(job, PRMConfig(steps=SPACE), PRMTrainConfig(labels="exact"), log=quiet)
    saved = (tmp_path / "prm" / "config.yaml").read_bytes()
    with pytest.raises(FileNotFoundError, match="no-model does not exist"):
        run_train(replace(job, base=str(tmp_path / "no-model"), threshold=0.3), PRMConfig(steps=SPACE),
                  PRMTrainConfig(labels="exact"), log=quiet)
    assert (tmp_path / "prm" / "config.yaml").read_bytes() == saved
    with pytest.raises(ValueError, match="no solution has a exact label on a step the PRM sees"):
        run_train(job, PRMConfig(steps=SPACE, max_len=2), PRMTrainConfig(labels="exact"), log=quiet)
    assert (tmp_path / "prm" / "config.yaml").read_bytes() == saved
    assert not (tmp_path / "prm" / "config_changes.jsonl").exists()


def test_bad_inputs_are_named(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": []}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: missing outcome, steps"):
        read_rows(bad)
    with pytest.raises(ValueError, match="labels"):
        PRMTrainConfig(labels="gold")
    with pytest.raises(ValueError, match="negative_upsample"):
        PRMTrainConfig(negative_upsample=0)
    for completions in (-4, 0, 2.5):  # -4 labelled every step 0 (bits[:-4] of 4 outcomes is none)
        with pytest.raises(ValueError, match="completions must be an integer >= 1"):
            PRMTrainConfig(completions=completions)


def test_more_completions_than_stored_are_refused_naming_the_row(tmp_path):
    """--completions 100 on rows holding 4 continuations per step silently used the 4."""
    import json

    path = tmp_path / "labels.jsonl"
    rows = [{"prompt": "p", "steps": ["a", "b"], "outcome": 1, "mc": {"weak": [[1, 0, 1, 1], [0] * 4]}}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    job = PRMTrainJob(data=str(path), out=str(tmp_path / "prm"), device="cpu")
    with pytest.raises(ValueError, match="labels.jsonl:1: mc.weak holds 4 continuations .* fewer than the 100"):
        run_train(job, PRMConfig(steps=SPACE), PRMTrainConfig(labels="weak", completions=100))
    assert read_rows(path, labels="weak", completions=4)
