"""`reasonrl report`: plots and the summary, including held-out accuracy per family."""

import json

import pytest

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


def test_a_cut_off_last_line_is_dropped_and_a_bad_middle_line_skipped(tmp_path):
    """A kill or a full disk mid-append left half a record: every rerun, and the report, died on it."""
    import json

    from reasonrl.rl.metrics import MetricsLogger, read_metrics

    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "reward_mean": 0.5, "rollout_seconds": 1.0} for s in range(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "reward_me')
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 2, 3]
    MetricsLogger(tmp_path, 10, console=False).truncate_after(2)  # a resume from step 2
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 2] and path.read_text().endswith("}\n")
    path.write_text(json.dumps(rows[0]) + "\n{oops\n" + json.dumps(rows[1]) + "\n")  # as every JSONL log here
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1]
    path.write_text(json.dumps(rows[0]) + "\n" + '{"step": 1, "rew')  # a reader beside a live writer cuts nothing
    assert [r["step"] for r in read_metrics(tmp_path)] == [0] and path.read_text().endswith('"rew')


def test_steps_that_skipped_their_update_still_count_their_time():
    from reasonrl.rl.report import summarize

    records = [{"step": 1, "skipped_update": 1, "rollout_seconds": 5.0, "dropped_groups": 0},
               {"step": 2, "reward_mean": 0.5, "rollout_seconds": 1.0, "train_seconds": 2.0, "dropped_groups": 0}]
    summary = summarize(records)
    assert summary["rollout_seconds"] == 6.0 and summary["train_seconds"] == 2.0


def test_null_values_the_logger_writes_for_nan_are_missing_not_a_crash(tmp_path):
    records = [{"step": 0, "eval_accuracy": None}, {"step": 1, "reward_mean": 0.5, "rollout_seconds": 1.0},
               {"step": 2, "reward_mean": None, "rollout_seconds": None, "train_seconds": None, "dropped_groups": None}]
    text = write_report(_run(tmp_path, records)).read_text()
    assert "| reward_first | 0.5 |" in text and "| rollout_seconds | 1 |" in text


def test_a_regenerated_report_keeps_the_demos_own_figures(tmp_path):
    """`reasonrl report runs/demo` dropped the rows only the demo computes (they live in summary.json)."""
    run = _run(tmp_path, [{"step": 0, "eval_accuracy": 0.5}, {"step": 1, "reward_mean": 0.25},
                          {"step": 2, "eval_accuracy": 0.75}])
    write_report(run, {"april_speedup": 1.5, "accuracy_after": 0.75})
    (run / "summary.json").write_text(json.dumps({"april_speedup": 1.5, "accuracy_after": 0.1, "steps": 2}))
    text = write_report(run).read_text()
    assert "| april_speedup | 1.5 |" in text
    assert "| accuracy_after | 0.75 |" in text and "| steps | 2 |" in text  # recomputed rows from the metrics
    (run / "summary.json").write_text(json.dumps({"april_speedup": 1.5, "steps": 2, "report": "report.md"}))
    text = write_report(run).read_text()
    assert "| april_speedup | 1.5 |" in text and "| report |" not in text
    with (run / "metrics.jsonl").open("a") as f:  # trained on past the demo's summary: its figures are stale
        f.write(json.dumps({"step": 3, "reward_mean": 0.5}) + "\n")
    assert "april_speedup" not in write_report(run).read_text()


def test_a_failed_checkpoint_save_names_the_last_good_one_and_leaves_no_partial(tmp_path, monkeypatch):
    import torch

    from reasonrl.rl import checkpoint

    (tmp_path / "checkpoints" / "step_000002").mkdir(parents=True)
    torch.save({}, tmp_path / "checkpoints" / "step_000002" / "trainer_state.pt")

    def full_disk(model, path, tokenizer):
        path.mkdir(parents=True)
        (path / "model.safetensors").write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 664064 vs 663956")

    monkeypatch.setattr(checkpoint, "save_model", full_disk)
    with pytest.raises(OSError, match="saving checkpoint step_000004 failed.*last good checkpoint is step_000002"):
        checkpoint.save_checkpoint(tmp_path, 4, None, None, {}, keep=2)
    assert not (tmp_path / "checkpoints" / "step_000004.tmp").exists()
