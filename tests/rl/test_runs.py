"""Runs users can trust: the resolved config saved and checked on rerun, finished runs, Ctrl-C."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from reasonrl.cli import main
from reasonrl.rl.checkpoint import latest_checkpoint
from reasonrl.rl.config import load_config
from reasonrl.rl.metrics import read_metrics


def recipe(tmp_path, steps=2, **overrides):
    """A letter-smoke run whose starting model is made on first use (model.init)."""
    data = {"model": {"path": str(tmp_path / "base"), "init": "qwen2"}, "env": {"name": "letter:a", "eval_size": 4},
            "rollout": {"prompts_per_step": 2, "samples_per_prompt": 4, "max_tokens": 8},
            "engine": {"kv_cache_memory": "16MiB", "max_num_seqs": 16}, "optim": {"lr": 1e-2},
            "train": {"steps": steps, "run_dir": str(tmp_path / "run"), "save_every": 1}}
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        data[section][key] = value
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class Killed(BaseException):
    """A kill at a code point: raised there, it passes every `except Exception` of the code under test."""


def test_the_resolved_config_is_printed_saved_and_is_itself_a_recipe(tmp_path, capsys):
    path = recipe(tmp_path)
    assert main(["train", str(path)]) == 0
    err = capsys.readouterr().err
    assert "config (" in err and "kv_cache_memory: 16777216" in err  # every key resolved, sizes in bytes
    saved = tmp_path / "run" / "config.yaml"
    assert load_config(saved) == load_config(path)  # a run directory's config.yaml reruns the run


def test_rerunning_a_finished_run_says_so_and_exits_0(tmp_path, capsys):
    path = recipe(tmp_path)
    assert main(["train", str(path)]) == 0
    capsys.readouterr()
    assert main(["train", str(path)]) == 0  # was: UnboundLocalError in the trainer
    assert "this run is finished (step 2 of 2)" in capsys.readouterr().err
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [0, 1, 2]


def test_a_finished_run_that_was_stopped_before_its_report_gets_it_on_the_rerun(tmp_path, capsys):
    """Stopped during its last step, a run had its last checkpoint but no report; the rerun said
    "finished" and never wrote it."""
    path = recipe(tmp_path)
    assert main(["train", str(path)]) == 0
    for name in ("report.md", "reward.png"):
        (tmp_path / "run" / name).unlink()
    assert main(["train", str(path)]) == 0
    assert "this run is finished" in capsys.readouterr().err
    assert (tmp_path / "run" / "report.md").is_file() and (tmp_path / "run" / "reward.png").is_file()
    # trained further (--accept-changes) and killed after the last checkpoint, before the new report: the
    # finished rerun kept the earlier run's report, which disagreed with metrics.jsonl
    (tmp_path / "run" / "report.md").write_text("| steps | 1 |\n")
    assert main(["train", str(path)]) == 0
    assert "| steps | 1 |" not in (tmp_path / "run" / "report.md").read_text()


def test_a_run_directory_another_live_process_runs_in_is_refused(tmp_path, capsys):
    """Two reruns of one command at once both resumed from one checkpoint and interleaved their steps."""
    path = recipe(tmp_path)
    assert main(["train", str(path)]) == 0
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _claim_by(other, tmp_path / "run")
        assert main(["train", str(path)]) == 2
        assert f"is in use by another process (pid {other.pid})" in capsys.readouterr().err
    finally:
        other.kill()
        other.wait()
    assert main(["train", str(path)]) == 0  # its process is gone: the claim binds nothing
    assert (tmp_path / "run" / ".claim").read_text().split()[0] == str(os.getpid())


def _claim_by(proc, run_dir):
    """Mark `run_dir` as the live process `proc`'s, as its run would (RUN/.claim: pid, start time)."""
    started = open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[1].split()[19]
    (run_dir / ".claim").write_text(f"{proc.pid} {started}\n")


def test_the_demo_refuses_a_run_directory_another_live_process_runs_in(tmp_path, monkeypatch, capsys):
    """A second demo moved the first one's live run directory aside, to DIR.previous, before any check, and the
    two then wrote into one run directory (or it deleted a DIR.previous that a resumed run was writing in)."""
    import reasonrl.demo.run as demo

    def went_on(name):
        raise AssertionError("the demo moved on past its run directory")

    monkeypatch.setattr(demo, "load_environment", went_on)
    run, previous = tmp_path / "demo", tmp_path / "demo.previous"
    for d in (run, previous):
        (d / "checkpoints").mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for busy in (run, previous):
            _claim_by(other, busy)
            assert main(["train", "--set", f"train.run_dir={run}"]) == 2
            assert f"{busy} is in use by another process (pid {other.pid})" in capsys.readouterr().err
            assert (run / "checkpoints").is_dir() and (previous / "checkpoints").is_dir()  # nothing moved
            (busy / ".claim").unlink()
    finally:
        other.kill()
        other.wait()


@pytest.mark.parametrize("damage", ["trainer_state.pt", "model.safetensors"])
def test_a_damaged_latest_checkpoint_stops_the_resume_with_one_line_saying_what_to_do(tmp_path, capsys, damage):
    """A latest checkpoint a power cut left truncated ended the resume in a PytorchStreamReader traceback,
    or a one-line SafetensorError with no advice."""
    path = recipe(tmp_path)
    assert main(["train", str(path)]) == 0
    latest = latest_checkpoint(tmp_path / "run")
    file = latest / damage
    file.write_bytes(file.read_bytes()[:len(file.read_bytes()) // 2] if damage == "trainer_state.pt" else b"")
    capsys.readouterr()
    longer = ["train", str(path), "--set", "train.steps=3", "--accept-changes"]
    assert main(longer) == 2
    [line] = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert line.startswith(f"reasonrl train: error: checkpoint {latest} cannot be read") and damage in line
    assert line.endswith("delete that directory and rerun to resume from step_000001")
    shutil.rmtree(latest)
    assert main(longer) == 0
    assert _steps(tmp_path / "run") == [0, 1, 2, 3]


def test_a_kill_while_model_init_makes_the_starting_checkpoint_leaves_a_rerun_that_makes_it(tmp_path, monkeypatch):
    """Killed while it wrote the starting checkpoint's weights, model.init left config.json without
    them, which every rerun took for a made checkpoint: "no weights in ...", exit 2."""
    from reasonrl.models import loader

    def killed(*args):
        raise Killed

    path = recipe(tmp_path)
    monkeypatch.setattr(loader, "_write_shards", killed)
    with pytest.raises(Killed):
        main(["train", str(path)])
    monkeypatch.undo()
    assert main(["train", str(path)]) == 0


def test_a_changed_config_is_refused_naming_the_keys(tmp_path, capsys):
    path = recipe(tmp_path)
    assert main(["train", str(path)]) == 0
    capsys.readouterr()
    assert main(["train", str(path), "--set", "optim.lr=0.5", "--set", "loss.name=dapo"]) == 2
    err = capsys.readouterr().err
    assert "optim.lr: 0.01 (saved) -> 0.5 (now)" in err and "loss.name: 'grpo' (saved) -> 'dapo' (now)" in err
    assert "--overwrite" in err and "--accept-changes" in err
    assert latest_checkpoint(tmp_path / "run").name == "step_000002"  # nothing ran
    # keys that do not change what is trained may change freely
    assert main(["train", str(path), "--set", "train.save_every=5", "--set", "train.eval_every=1"]) == 0


def test_a_run_that_failed_before_its_first_step_binds_nothing(tmp_path, capsys):
    path = recipe(tmp_path, **{"env.name": "nosuchenv:"})
    assert main(["train", str(path)]) == 2 and "unknown environment" in capsys.readouterr().err
    assert main(["train", str(recipe(tmp_path))]) == 0  # fixed: runs, no "other settings" refusal


def test_accepted_changes_continue_the_run_and_are_recorded(tmp_path):
    path = recipe(tmp_path)
    assert main(["train", str(path)]) == 0
    assert main(["train", str(path), "--set", "train.steps=3", "--accept-changes"]) == 0
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [0, 1, 2, 3]  # resumed at 2, not restarted
    changes = [json.loads(line) for line in (tmp_path / "run" / "config_changes.jsonl").read_text().splitlines()]
    assert changes[0]["changes"] == [["train.steps", 2, 3]]
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["steps"] == 3


def test_accepted_optimizer_changes_are_what_the_resumed_run_trains_with(tmp_path):
    """The saved optimizer and schedule state brought the saved lr, weight decay and schedule back
    over the accepted ones: recorded as changed, trained as before."""
    import torch

    path = recipe(tmp_path, **{"optim.schedule": "cosine"})
    assert main(["train", str(path)]) == 0
    assert main(["train", str(path), "--set", "train.steps=4", "--set", "optim.lr=0.001", "--set",
                 "optim.weight_decay=0.5", "--set", "optim.betas=[0.8, 0.9]", "--accept-changes"]) == 0
    lrs = {r["step"]: r["lr"] for r in read_metrics(tmp_path / "run") if "lr" in r}
    # the new 4-step cosine at steps 3 and 4 (factors 0.5 and 0.146), not the old 2-step one's 0
    assert lrs[1] == pytest.approx(1e-2) and lrs[3] == pytest.approx(5e-4) and lrs[4] == pytest.approx(1.4645e-4, rel=1e-3)
    state = torch.load(latest_checkpoint(tmp_path / "run") / "trainer_state.pt", weights_only=False)
    [group] = state["update"]["optimizer"]["param_groups"]
    assert group["weight_decay"] == 0.5 and tuple(group["betas"]) == (0.8, 0.9) and group["initial_lr"] == 1e-3
    assert state["update"]["optimizer"]["state"]  # Adam's moments came through the resume


def run_started_here(tmp_path, monkeypatch, run_dir: str) -> dict:
    """A finished run started in tmp_path from relative.yaml, its train.run_dir relative (as in the recipes)."""
    monkeypatch.chdir(tmp_path)
    data = yaml.safe_load(recipe(tmp_path).read_text())
    data["train"]["run_dir"] = run_dir
    (tmp_path / "relative.yaml").write_text(yaml.safe_dump(data))
    assert main(["train", "relative.yaml"]) == 0
    return data


def test_a_runs_own_config_from_another_directory_is_refused_not_started_afresh(tmp_path, capsys, monkeypatch):
    """RUN/config.yaml keeps relative paths as given: run from elsewhere it started a new run there."""
    data = run_started_here(tmp_path, monkeypatch, "run")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    capsys.readouterr()
    assert main(["train", str(tmp_path / "run" / "config.yaml")]) == 2
    assert f"run it from there ({tmp_path})" in capsys.readouterr().err
    assert not (tmp_path / "elsewhere" / "run").exists()
    # naming the run itself does not help: its model and data paths would be read from here
    for name in (str(tmp_path / "run"), "../run", "../run/"):
        assert main(["train", str(tmp_path / "run" / "config.yaml"), "--set", f"train.run_dir={name}"]) == 2
        assert "run it from there" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "relative.yaml"), "--set", "train.run_dir="]) == 2  # an unset $OUT
    assert "train.run_dir: expected str, got None" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == []
    # a recipe that happens to be named config.yaml, or a run's config reused for a new run, is no such case
    capsys.readouterr()
    assert main(["train", str(tmp_path / "run" / "config.yaml"), "--set", f"train.run_dir={tmp_path / 'b'}"]) == 0
    (tmp_path / "mine").mkdir()
    data["train"]["run_dir"] = str(tmp_path / "c")
    (tmp_path / "mine" / "config.yaml").write_text(yaml.safe_dump(data))
    assert main(["train", str(tmp_path / "mine" / "config.yaml")]) == 0


def test_the_demo_never_moves_or_deletes_a_directory_that_is_not_a_run(tmp_path, capsys):
    mine = tmp_path / "mydata"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main(["train", "--set", f"train.run_dir={mine}"]) == 2
    assert "not a reasonrl run directory" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "keep me" and not (tmp_path / "mydata.previous").exists()
    assert main(["train", str(recipe(tmp_path, **{"train.run_dir": str(mine)}))]) == 2  # nor does a run write into it
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    (tmp_path / "empty").mkdir()  # an empty directory is as good as a new one
    assert main(["train", "--set", f"train.run_dir={tmp_path / 'empty'}", "--set", "train.steps=1",
                 "--set", "env.eval_size=4"]) == 0


def test_overwrite_starts_afresh_and_refuses_a_directory_that_is_not_a_run(tmp_path, capsys):
    path = recipe(tmp_path)
    assert main(["train", str(path)]) == 0
    (tmp_path / "run" / "marker").write_text("old run")
    assert main(["train", str(path), "--set", "optim.lr=0.02", "--overwrite"]) == 0
    assert not (tmp_path / "run" / "marker").exists()
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["optim"]["lr"] == 0.02
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    capsys.readouterr()
    assert main(["train", str(path), "--set", f"train.run_dir={other}", "--overwrite"]) == 2
    assert "not a reasonrl run directory" in capsys.readouterr().err and (other / "thesis.tex").is_file()


def _wait_for(predicate, proc, timeout=300):
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline
        time.sleep(0.05)


def _cli(args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "reasonrl.cli", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _steps(run_dir):
    path = run_dir / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.is_file() else []


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_finishes_the_step_checkpoints_and_says_how_to_resume(tmp_path, sig):
    path = recipe(tmp_path, steps=400, **{"train.save_every": 1000})
    proc = _cli(["train", str(path)], tmp_path)
    _wait_for(lambda: max(_steps(tmp_path / "run"), default=0) >= 2, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err and "resume with: reasonrl train" in err
    done = max(_steps(tmp_path / "run"))
    assert 2 <= done < 400 and latest_checkpoint(tmp_path / "run").name == f"step_{done:06d}"  # saved at the stop
    resumed = _cli(["train", str(tmp_path / "run" / "config.yaml"), "--set", "train.steps=" + str(done + 1),
                    "--accept-changes"], tmp_path)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert _steps(tmp_path / "run") == list(range(done + 2))


@pytest.mark.slow
def test_sft_run_checkpoints_resumes_and_stops_on_sigterm(tmp_path):
    from reasonrl.models.tiny import make_checkpoint, make_tokenizer

    tok = make_tokenizer(["Write the letter a many times. aaaa bbbb"] * 10, vocab_size=300)
    base = make_checkpoint(tmp_path / "base", "qwen2", tok, hidden_size=64, num_layers=2)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Write the letter {c} many times.", "response": c * 8}) + "\n"
                            for c in "ab" * 200))
    args = ["sft", "--model", str(base), "--data", str(data), "--out", str(tmp_path / "sft"), "--epochs", "50",
            "--samples-per-step", "8", "--lr", "3e-3", "--eval-fraction", "0.1", "--eval-every", "5",
            "--save-every", "1000"]
    proc = _cli(args, tmp_path)
    _wait_for(lambda: max(_steps(tmp_path / "sft"), default=0) >= 3, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err
    done = max(_steps(tmp_path / "sft"))
    assert latest_checkpoint(tmp_path / "sft").name == f"step_{done:06d}"
    rows = read_metrics(tmp_path / "sft")
    assert rows[0]["step"] == 0 and rows[0]["eval_loss"] > 0  # held-out loss before training
    assert all(k in rows[1] for k in ("loss", "lr", "step_seconds", "eta_seconds", "train_tokens_per_s"))
    # resume: the same command continues at the next step (a different one is refused, naming the key)
    bigger = _cli([*args[:-2], "--save-every", "1000", "--lr", "1e-3"], tmp_path)
    assert bigger.wait(timeout=120) == 2 and "lr: 0.003 (saved) -> 0.001 (now)" in bigger.stderr.read()
    shorter = [*args]
    shorter[shorter.index("--epochs") + 1] = str((done + 2) * 8 / 360)  # 360 training examples: 2 steps more
    resumed = _cli([*shorter, "--accept-changes"], tmp_path)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    steps = _steps(tmp_path / "sft")
    assert steps == list(range(steps[-1] + 1)) and steps[-1] > done
    assert (tmp_path / "sft" / "config.json").is_file()  # the fine-tuned model at the run directory's root
    losses = [r["eval_loss"] for r in read_metrics(tmp_path / "sft") if r.get("eval_loss") is not None]
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_eval_stops_on_sigint_saves_what_finished_and_resumes(tmp_path):
    out = tmp_path / "eval"
    args = ["eval", "sums:", "--model", str(_demo_policy()), "--out", str(out), "--limit", "200", "--n", "4",
            "--temperature", "1.0", "--max-tokens", "64", "--no-progress", "--kv-cache-memory", "64MiB"]
    proc = _cli(args, tmp_path)
    samples = out / "samples.jsonl"
    _wait_for(lambda: samples.is_file() and len(samples.read_text().splitlines()) >= 20, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err and "Rerun the same command" in err, err
    summary = json.loads((out / "summary.json").read_text())
    kept = len(samples.read_text().splitlines())
    assert summary["stopped"] is True and summary["complete"] is False and 20 <= kept < 800
    resumed = _cli(args, tmp_path)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["run"]["resumed"] == kept


def _demo_policy():
    from reasonrl.demo.policy import SHIPPED

    return SHIPPED


def _tiny_sft_args(tmp_path):
    """`reasonrl sft` arguments for two steps of a one-layer model on 16 examples, out: tmp_path/sft."""
    from reasonrl.models.tiny import make_checkpoint, make_tokenizer

    tok = make_tokenizer(["Write the letter a many times. aaaa bbbb"] * 10, vocab_size=300)
    base = make_checkpoint(tmp_path / "base", "qwen2", tok, hidden_size=32, num_layers=1)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Write {c}.", "response": c * 4}) + "\n" for c in "ab" * 8))
    return ["sft", "--model", str(base), "--data", str(data), "--out", str(tmp_path / "sft"), "--epochs", "1",
            "--samples-per-step", "8", "--device", "cpu"]


def test_an_sft_run_stopped_in_its_last_step_still_writes_its_model(tmp_path, monkeypatch, capsys):
    """A stop during the last step saved the checkpoint but not the fine-tuned model, and the rerun said
    "finished" without writing it either."""
    from reasonrl.rl.sft import SFTTrainer

    args = _tiny_sft_args(tmp_path)
    step = SFTTrainer.step

    def stopped_in_the_last(self):
        if self.step_count + 1 == self.steps:
            os.kill(os.getpid(), signal.SIGINT)
        return step(self)

    monkeypatch.setattr(SFTTrainer, "step", stopped_in_the_last)
    assert main(args) == 0
    assert (tmp_path / "sft" / "model.safetensors").is_file()
    monkeypatch.setattr(SFTTrainer, "step", step)
    (tmp_path / "sft" / "model.safetensors").unlink()  # as after a stop or a failure past the last checkpoint
    assert main(args) == 0
    assert "this run is finished" in capsys.readouterr().err
    assert (tmp_path / "sft" / "model.safetensors").is_file()


@pytest.mark.parametrize("at", ["tokenizer", "weights"])
def test_a_kill_while_sft_saves_its_model_is_repaired_by_the_rerun(tmp_path, monkeypatch, capsys, at):
    """Killed while it wrote the fine-tuned model at the run directory's root (after the weights, or
    halfway through them), a run kept a model without tokenizer.json or with a truncated
    model.safetensors, and every rerun said "finished; nothing to do"."""
    import torch
    from safetensors.torch import load_file

    from reasonrl.models import Tokenizer, load_model, loader

    args = _tiny_sft_args(tmp_path)
    out = tmp_path / "sft"
    save_tokenizer, write_shards = Tokenizer.save, loader._write_shards

    def final(path):
        return "checkpoints" not in Path(path).parts

    def killed_before_the_tokenizer(self, path):
        if final(path):
            raise Killed
        save_tokenizer(self, path)

    def killed_halfway_through_the_weights(tensors, path, max_shard_bytes):
        if final(path):
            (path / "model.safetensors").write_bytes(b"\0" * 1000)  # what the kill left of it
            raise Killed
        write_shards(tensors, path, max_shard_bytes)

    if at == "tokenizer":
        monkeypatch.setattr(Tokenizer, "save", killed_before_the_tokenizer)
    else:
        monkeypatch.setattr(loader, "_write_shards", killed_halfway_through_the_weights)
    with pytest.raises(Killed):
        main(args)
    monkeypatch.undo()
    assert main(args) == 0
    assert "this run is finished" in capsys.readouterr().err
    load_model(out, "cpu")  # a whole model: config, weights and tokenizer load
    Tokenizer.from_dir(out)
    saved, last = load_file(out / "model.safetensors"), load_file(latest_checkpoint(out) / "model.safetensors")
    assert saved.keys() == last.keys() and all(torch.equal(saved[k], last[k]) for k in saved)


def test_an_sft_step_whose_loss_is_not_finite_stops_the_run_unsaved(tmp_path, monkeypatch, capsys):
    """It stepped the optimizer with nan gradients, went on, and wrote an all-nan model, exit 0."""
    import torch

    from reasonrl.models.tiny import make_checkpoint, make_tokenizer
    from reasonrl.rl import sft

    tok = make_tokenizer(["Write the letter a many times. aaaa bbbb"] * 10, vocab_size=300)
    base = make_checkpoint(tmp_path / "base", "qwen2", tok, hidden_size=32, num_layers=1)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Write {c}.", "response": c * 4}) + "\n" for c in "ab" * 8))
    loss_of, calls = sft.sft_loss, []

    def nan_from_step_2(model, samples, images=None):
        loss, n = loss_of(model, samples, images)
        calls.append(1)
        return (loss * float("nan") if len(calls) > 1 else loss), n

    monkeypatch.setattr(sft, "sft_loss", nan_from_step_2)
    out = tmp_path / "sft"
    assert main(["sft", "--model", str(base), "--data", str(data), "--out", str(out), "--epochs", "2",
                 "--samples-per-step", "16", "--save-every", "1", "--device", "cpu"]) == 1
    assert "step 2: 1 of 1 optimizer steps had a gradient norm that is not finite" in capsys.readouterr().err
    assert latest_checkpoint(out).name == "step_000001" and not (out / "model.safetensors").exists()
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for t in load_file(latest_checkpoint(out) / "model.safetensors").values())


def test_a_stopped_run_names_the_callers_resume_command(tmp_path, ctrl_c_in_train_step, capsys):
    """LVR's GRPO stage runs run_training: a stop printed `reasonrl train RUN/config.yaml`, which
    would run the GRPO recipe without LVR's latent data, and then LVR's own hint."""
    from reasonrl.rl.train import RunControl, run_training

    code = run_training(load_config(recipe(tmp_path, steps=3)), RunControl(), console=False, resume="lvr --stages grpo")
    err = capsys.readouterr().err
    assert code == 128 + signal.SIGINT and "resume with: lvr --stages grpo" in err and "reasonrl train" not in err


def test_an_sft_run_may_not_write_where_its_model_or_data_is(tmp_path, capsys):
    """`sft --model X --out X --overwrite` deleted the model it was about to fine-tune (and without
    --overwrite wrote the fine-tuned model over it)."""
    args = _tiny_sft_args(tmp_path)
    model = args[args.index("--model") + 1]
    for out, extra in ((model, []), (model, ["--overwrite"]), (str(tmp_path), [])):  # is it, or holds it
        argv = [*args, *extra]
        argv[argv.index("--out") + 1] = out
        assert main(argv) == 2 and "which this run reads" in capsys.readouterr().err
    assert (tmp_path / "base" / "config.json").is_file() and (tmp_path / "data.jsonl").is_file()


def test_a_run_saved_before_an_option_existed_resumes_unless_the_option_is_set(tmp_path):
    """env.eval_name was added after runs were started: their saved config lacks it, and resuming
    with the same recipe was refused ('env.eval_name: None (saved) -> None (now)')."""
    from reasonrl.rl.run import RunMismatch, open_run

    run = tmp_path / "run"
    saved = {"env": {"name": "sums:", "eval_size": 4}, "train": {"steps": 3}}
    open_run(run, saved, console=False)
    (run / "metrics.jsonl").write_text('{"step": 0}\n')  # it did some work: its config binds
    open_run(run, {"env": {**saved["env"], "eval_name": None}, "train": {"steps": 3}}, console=False)
    with pytest.raises(RunMismatch, match="env.eval_name"):
        open_run(run, {"env": {**saved["env"], "eval_name": "math:test.jsonl"}, "train": {"steps": 3}}, console=False)


def test_a_run_saved_when_latent_exit_defaulted_to_steps_resumes_with_the_new_default(tmp_path):
    """EngineConfig.latent_exit's default became None (the checkpoint's exit, "steps" for every checkpoint
    of those runs): their saved 'steps' was refused as 'engine.latent_exit: steps (saved) -> None (now)'."""
    from reasonrl.rl.run import RunMismatch, open_run

    run = tmp_path / "run"
    open_run(run, {"engine": {"latent_exit": "steps"}, "train": {"steps": 3}}, console=False)
    (run / "metrics.jsonl").write_text('{"step": 0}\n')  # it did some work: its config binds
    open_run(run, {"engine": {"latent_exit": None}, "train": {"steps": 3}}, console=False)
    with pytest.raises(RunMismatch, match="engine.latent_exit"):
        open_run(run, {"engine": {"latent_exit": "end_token"}, "train": {"steps": 3}}, console=False)


def test_train_overwrite_refuses_a_run_directory_holding_its_data(tmp_path, capsys):
    """`--overwrite` deleted the run directory and with it the math: file the recipe trains on."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "data.jsonl").write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n")
    path = recipe(tmp_path, **{"env.name": f"math:{run / 'data.jsonl'}"})
    assert main(["train", str(path), "--overwrite"]) == 2 and "which this run reads" in capsys.readouterr().err
    assert (run / "data.jsonl").is_file()


def test_rl_and_sft_update_float32_master_weights_where_loading_keeps_the_checkpoints_dtype(tmp_path, monkeypatch):
    """On a GPU, where loading without a dtype keeps the checkpoint's, a run without model.dtype (and every SFT
    run) updated a bfloat16 checkpoint's weights in bfloat16: an AdamW step at lr 1e-6 moved 2% of them. That
    loading default is imitated here on the CPU."""
    from safetensors.torch import load_file

    from reasonrl.models import Tokenizer, load_model, loader
    from reasonrl.models.loader import save_model
    from reasonrl.models.tiny import make_checkpoint, make_tokenizer

    tok = make_tokenizer(["Write the letter a many times. aaaa bbbb"] * 10, vocab_size=300)
    base = make_checkpoint(tmp_path / "fp32", "qwen2", tok, hidden_size=32, num_layers=1)
    base = save_model(load_model(base, dtype=torch.bfloat16), tmp_path / "base", Tokenizer.from_dir(base))
    real = loader.resolve_dtype
    monkeypatch.setattr(loader, "resolve_dtype", lambda dtype, device, cfg=None: real(
        cfg.torch_dtype if dtype in (None, "auto") and cfg is not None else dtype, device, cfg))
    assert load_model(base).dtype == torch.bfloat16  # (the accelerator's default)

    path = recipe(tmp_path, steps=1, **{"model.path": str(base), "model.init": None})
    assert main(["train", str(path)]) == 0
    weights = load_file(str(latest_checkpoint(tmp_path / "run") / "model.safetensors"))
    assert {v.dtype for v in weights.values()} == {torch.float32}

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": "Write the letter a.", "response": "aaaa"}) + "\n" for _ in range(8)))
    assert main(["sft", "--model", str(base), "--data", str(data), "--out", str(tmp_path / "sft"), "--epochs", "1",
                 "--samples-per-step", "8"]) == 0
    assert {v.dtype for v in load_file(str(tmp_path / "sft" / "model.safetensors")).values()} == {torch.float32}
    # and what they save still serves in the checkpoint's dtype (it said float32: later runs rolled out in it)
    for saved in (latest_checkpoint(tmp_path / "run"), tmp_path / "sft"):
        assert json.loads((saved / "config.json").read_text())["torch_dtype"] == "bfloat16"
        assert load_model(saved).dtype == torch.bfloat16 and load_model(saved, dtype="float32").dtype == torch.float32
    path = recipe(tmp_path, steps=1, **{"model.path": str(base), "model.init": None, "model.dtype": "bfloat16",
                                        "train.run_dir": str(tmp_path / "bf16")})
    with pytest.warns(UserWarning, match="model.dtype bfloat16: the optimizer updates bfloat16 weights"):
        assert main(["train", str(path)]) == 0  # asked for: done, and warned about
    with pytest.warns(UserWarning, match="--dtype bfloat16: the optimizer updates bfloat16 weights.*--autocast"):
        assert main(["sft", "--model", str(base), "--data", str(data), "--out", str(tmp_path / "sft16"), "--epochs", "1",
                     "--samples-per-step", "8", "--dtype", "bfloat16"]) == 0  # half the memory, when asked for
    assert {v.dtype for v in load_file(str(tmp_path / "sft16" / "model.safetensors")).values()} == {torch.bfloat16}


def test_of_two_processes_claiming_a_run_directory_at_once_the_second_is_refused(tmp_path):
    """The claim was checked, then written: two reruns started together could both see no claim and both run."""
    import fcntl

    run = tmp_path / "run"
    run.mkdir()
    script = ("import sys; from pathlib import Path; from reasonrl.rl.run import _claim, RunMismatch\n"
              "print('ready', flush=True)\n"
              "try:\n    _claim(Path(sys.argv[1])); print('claimed')\n"
              "except RunMismatch as exc:\n    print('refused', exc)\n")
    with open(run / ".claim", "a+") as claim:
        fcntl.flock(claim, fcntl.LOCK_EX)  # this process is between its check and its write
        other = subprocess.Popen([sys.executable, "-c", script, str(run)], stdout=subprocess.PIPE, text=True)
        assert other.stdout.readline().strip() == "ready"
        time.sleep(0.5)  # the other claims now: it must wait for this claim, not go ahead of it
        started = open(f"/proc/{os.getpid()}/stat").read().rsplit(")", 1)[1].split()[19]
        claim.write(f"{os.getpid()} {started}\n")
        claim.flush()
    out = other.communicate(timeout=60)[0]
    assert out.startswith(f"refused {run} is in use by another process (pid {os.getpid()})"), out


def test_an_extended_sft_run_killed_after_its_last_checkpoint_does_not_keep_the_old_model(tmp_path, monkeypatch, capsys):
    """A finished run trained further (--accept-changes) and killed after its last checkpoint, before its
    model was saved, kept the earlier model at the root, and the rerun said "finished" over it."""
    from safetensors.torch import load_file

    import reasonrl.models.loader as loader

    args = _tiny_sft_args(tmp_path)
    out = tmp_path / "sft"
    assert main(args) == 0
    longer = [*args[:args.index("--epochs")], "--epochs", "2", *args[args.index("--epochs") + 2:]]
    real = loader.save_model

    def killed_at_the_root(model, path, *a, **k):
        if "checkpoints" not in Path(path).parts:
            raise Killed
        return real(model, path, *a, **k)

    monkeypatch.setattr(loader, "save_model", killed_at_the_root)
    with pytest.raises(Killed):
        main([*longer, "--accept-changes"])
    monkeypatch.undo()
    assert not (out / "model.safetensors").exists()  # not the earlier run's model passing for this one
    assert main(longer) == 0 and "this run is finished" in capsys.readouterr().err
    saved, last = load_file(out / "model.safetensors"), load_file(latest_checkpoint(out) / "model.safetensors")
    assert saved.keys() == last.keys() and all(torch.equal(saved[k], last[k]) for k in saved)


def test_a_recipe_with_a_key_given_twice_or_a_bad_set_value_is_one_line(tmp_path, capsys):
    """A second `optim:` section silently replaced the first (its lr dropped); a --set value that is not
    YAML printed a traceback."""
    path = tmp_path / "twice.yaml"
    path.write_text("optim: {lr: 1.0e-2}\nenv: {name: 'letter:ab'}\noptim: {weight_decay: 0.01}\n")
    assert main(["train", str(path)]) == 2
    assert "key 'optim' is given twice" in capsys.readouterr().err
    assert main(["train", str(recipe(tmp_path)), "--set", "optim.betas=[0.9, 0.95"]) == 2
    assert "--set optim.betas: '[0.9, 0.95' is not valid YAML" in capsys.readouterr().err


def test_the_run_directory_named_another_way_is_the_same_run(tmp_path, capsys, monkeypatch):
    """`runs/e/`, `./runs/e` and the absolute path were "other settings" than the saved `runs/e`."""
    run_started_here(tmp_path, monkeypatch, "runs/e")
    capsys.readouterr()
    for name in ("runs/e/", "./runs/e", str(tmp_path / "runs" / "e"), "runs/e"):
        assert main(["train", "relative.yaml", "--set", f"train.run_dir={name}"]) == 0
        assert "this run is finished" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "e" / "config_changes.jsonl").exists()
    assert main(["train", "relative.yaml", "--set", "train.run_dir=runs/e/", "--set", "optim.lr=0.5"]) == 2
    err = capsys.readouterr().err
    assert "optim.lr" in err and "train.run_dir" not in err  # other settings are still refused
    # a recipe from another directory, naming the run: its relative paths would be read from there
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["train", str(tmp_path / "relative.yaml"), "--set", f"train.run_dir={tmp_path / 'runs' / 'e'}"]) == 2
    assert "train.run_dir" in capsys.readouterr().err


def test_a_rerun_refused_after_accepting_its_changes_leaves_the_run_as_it_was(tmp_path, capsys):
    """--accept-changes rewrote config.yaml and config_changes.jsonl before the new environment failed
    to load: the original command was then refused, its own settings being "other settings"."""
    path = recipe(tmp_path)
    assert main(["train", str(path)]) == 0
    run = tmp_path / "run"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".claim"}
    capsys.readouterr()
    assert main(["train", str(path), "--set", f"env.name=math:{tmp_path / 'missing.jsonl'}", "--set",
                 "train.steps=3", "--accept-changes"]) != 0
    assert "missing.jsonl" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".claim"} == before
    assert main(["train", str(path)]) == 0 and "this run is finished" in capsys.readouterr().err
    assert main(["train", str(path), "--set", "train.steps=3", "--accept-changes"]) == 0
    changes = [json.loads(line) for line in (run / "config_changes.jsonl").read_text().splitlines()]
    assert [c["changes"] for c in changes] == [[["train.steps", 2, 3]]]
    # so with SFT, whose data is read after the run directory is opened
    args = _tiny_sft_args(tmp_path)
    assert main(args) == 0
    out = tmp_path / "sft"
    before = (out / "config.yaml").read_bytes()
    (tmp_path / "bad.jsonl").write_text("not json\n")
    bad = [*args, "--accept-changes"]
    bad[bad.index("--data") + 1] = str(tmp_path / "bad.jsonl")
    assert main(bad) != 0
    assert (out / "config.yaml").read_bytes() == before and not (out / "config_changes.jsonl").exists()
    assert main(args) == 0 and "this run is finished" in capsys.readouterr().err
