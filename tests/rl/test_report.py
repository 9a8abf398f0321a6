"""`reasonrl report`: plots and the summary, including held-out accuracy per family."""

import json

from reasonrl.rl.report import family_table, write_report


def _run(tmp_path, records):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return tmp_path


def test_per_family_accuracy_gets_a_table_and_a_plot(tmp_path):
    records = [
        {"step": 0, "eval_accuracy": 0.4, "eval_accuracy/count": 0.25, "eval_accuracy/colour": 0.5},
        {"step": 1, "reward_mean": 0.3, "accuracy": 0.3},
        {"step": 10, "eval_accuracy": 0.6, "eval_accuracy/count": 0.5, "eval_accuracy/colour": 0.75},
    ]
    text = write_report(_run(tmp_path, records)).read_text()
    assert "| count | 0.250 | 0.500 | +25.0 points |" in text
    assert "| colour | 0.500 | 0.750 | +25.0 points |" in text
    assert "held-out accuracy, step 0 | step 10" in text
    assert (tmp_path / "accuracy_by_family.png").stat().st_size > 1000
    assert "![accuracy_by_family](accuracy_by_family.png)" in text


def test_a_family_missing_from_one_evaluation_is_shown_as_missing():
    rows = family_table([{"step": 0, "eval_accuracy/count": 0.5}, {"step": 5, "eval_accuracy/shape": 1.0}])
    assert "| count | 0.500 | - | - |" in rows and "| shape | - | 1.000 | - |" in rows


def test_a_run_without_families_has_no_family_table_or_plot(tmp_path):
    text = write_report(_run(tmp_path, [{"step": 0, "eval_accuracy": 0.1}, {"step": 1, "reward_mean": 0.2}])).read_text()
    assert "family" not in text and not (tmp_path / "accuracy_by_family.png").exists()
