"""Trackers besides metrics.jsonl: asked-for but missing ones fail at start; present ones get every scalar."""

import sys
import types

import pytest

from reasonrl.rl.metrics import MetricsLogger
from reasonrl.rl.trackers import MissingTracker, make_trackers


def test_a_tracker_asked_for_but_not_installed_is_an_error_naming_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with pytest.raises(MissingTracker, match=r"pip install 'reasonrl\[wandb\]'"):
        make_trackers(["wandb"], tmp_path, {})
    with pytest.raises(MissingTracker, match="unknown tracker"):
        make_trackers(["mlflow"], tmp_path, {})


def fake_wandb(calls):
    module = types.ModuleType("wandb")

    class Run:
        def log(self, scalars, step):
            calls.append(("log", step, dict(scalars)))

        def finish(self):
            calls.append(("finish",))

    def init(**kwargs):
        calls.append(("init", kwargs))
        return Run()

    module.init = init
    return module


def test_wandb_gets_every_scalar_and_a_resumed_run_continues_the_same_wandb_run(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb(calls))
    monkeypatch.setenv("WANDB_PROJECT", "letters")
    logger = MetricsLogger(tmp_path, 3, console=False, trackers=make_trackers(["wandb"], tmp_path, {"optim": {"lr": 1}}))
    logger.log(1, {"reward_mean": 0.5, "note": "text is not a scalar", "ok": True})
    logger.close()
    init = calls[0][1]
    assert init["project"] == "letters" and init["config"] == {"optim": {"lr": 1}} and init["resume"] == "allow"
    assert calls[1] == ("log", 1, {"reward_mean": 0.5}) and calls[-1] == ("finish",)
    make_trackers(["wandb"], tmp_path, {})
    assert calls[-1][1]["id"] == init["id"]  # the id is kept in the run directory


def test_tensorboard_writer_gets_every_scalar(tmp_path, monkeypatch):
    written = []
    monkeypatch.setitem(sys.modules, "tensorboard", types.ModuleType("tensorboard"))

    class Writer:
        def __init__(self, logdir, purge_step=None):
            written.append(("dir", logdir))

        def add_scalar(self, key, value, step):
            written.append((key, value, step))

        def close(self):
            written.append(("closed",))

    tb = types.ModuleType("torch.utils.tensorboard")
    tb.SummaryWriter = Writer
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", tb)
    logger = MetricsLogger(tmp_path, 3, console=False, trackers=make_trackers(["tensorboard"], tmp_path, {}))
    logger.log(2, {"loss": 0.25, "grad_norm": 1.5})
    logger.close()
    assert written[0] == ("dir", str(tmp_path / "tensorboard"))
    assert ("loss", 0.25, 2) in written and ("grad_norm", 1.5, 2) in written and written[-1] == ("closed",)


def test_tensorboard_drops_the_steps_a_resumed_run_logs_again(tmp_path, monkeypatch):
    """Without purge_step the events logged past the checkpoint stayed, and TensorBoard plotted the
    re-run steps twice."""
    made = []

    class SummaryWriter:
        def __init__(self, log_dir, purge_step=None):
            made.append(purge_step)

        def add_scalar(self, key, value, step):
            pass

        def close(self):
            pass

    board = types.ModuleType("torch.utils.tensorboard")
    board.SummaryWriter = SummaryWriter
    monkeypatch.setitem(sys.modules, "tensorboard", types.ModuleType("tensorboard"))
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", board)
    [tracker] = make_trackers(["tensorboard"], tmp_path, {})
    tracker.log(3, {"reward_mean": 0.5})  # the first step after a resume from step 2
    tracker.log(4, {"reward_mean": 0.6})
    tracker.close()
    assert made == [3]


def test_wandb_that_cannot_start_is_one_line_naming_the_ways_out(tmp_path, monkeypatch):
    module = types.ModuleType("wandb")

    def init(**kwargs):
        raise RuntimeError("No API key configured. Use `wandb login` to log in.")

    module.init = init
    monkeypatch.setitem(sys.modules, "wandb", module)
    with pytest.raises(MissingTracker, match="wandb could not start.*No API key.*WANDB_MODE=offline"):
        make_trackers(["wandb"], tmp_path, {})
