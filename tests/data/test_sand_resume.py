"""Kill and resume: a run killed with SIGKILL mid-stage, rerun, pays for no call twice and ends
with exactly the output of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from sand_double import ScriptedServer
from sand_helpers import REPO, outputs, report, run, sums_recipe, write_recipe


def recorded_calls(out) -> int:
    return sum(len(p.read_text().splitlines()) for p in (out / "calls").glob("*.jsonl")) if (out / "calls").exists() else 0


def cli(recipe, out) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "reasonrl.cli", "data", "sand", str(recipe), "--out", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_when_held(proc: subprocess.Popen, server: ScriptedServer, out, timeout: float = 120) -> str:
    """SIGKILL `proc` once the server holds its calls and every answered call is on disk; the stage it was in."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before it was killed:\n{proc.stderr.read()[-2000:]}")
        if server.total_answered >= server.limit and recorded_calls(out) == server.total_answered:
            time.sleep(0.3)  # held requests stay held: nothing more can arrive on disk
            if recorded_calls(out) == server.total_answered:
                break
        time.sleep(0.05)
    else:
        raise AssertionError("the run never reached the held calls")
    files = sorted((out / "calls").glob("*.jsonl"), key=lambda p: p.stat().st_mtime)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return files[-1].stem


@pytest.mark.slow
@pytest.mark.parametrize("hold_after, stage_prefix", [(45, "base."), (175, "hiked.")])
def test_a_killed_run_resumes_without_repaying_a_call_and_ends_like_an_uninterrupted_one(tmp_path, hold_after,
                                                                                          stage_prefix):
    reference = ScriptedServer()  # the sums teacher with its faults: messy output on purpose
    try:
        data = sums_recipe(tmp_path, reference.url, generate={"problems": 30},
                           decontaminate={"embed_base_url": reference.url, "embed_model": "double"})
        run(data, tmp_path / "uninterrupted")
    finally:
        reference.stop()

    server = ScriptedServer()
    try:
        data = sums_recipe(tmp_path, server.url, generate={"problems": 30},
                           decontaminate={"embed_base_url": server.url, "embed_model": "double"})
        recipe, out = write_recipe(tmp_path / "recipe.yaml", data), tmp_path / "killed"
        server.hold_after(hold_after)
        stage = kill_when_held(cli(recipe, out), server, out)
        assert stage.startswith(stage_prefix)  # killed mid-stage, with calls of that stage on disk and in flight
        time.sleep(0.5)  # the held requests see their client gone
        server.release()
        rerun = cli(recipe, out)
        _, stderr = rerun.communicate(timeout=300)
        assert rerun.returncode == 0, stderr[-3000:]
        repaid = {key: n for key, n in server.answered.items() if n > 1}
    finally:
        server.stop()
    assert not repaid  # no answered call was asked again
    assert sum(server.answered.values()) == recorded_calls(out)  # every paid call is on record, once
    assert outputs(out) == outputs(tmp_path / "uninterrupted")
    spent, expected = report(out)["spent"], report(tmp_path / "uninterrupted")["spent"]
    assert spent == expected
    assert json.loads((out / "report.json").read_text())["accepted"]["all"] > 5


@pytest.mark.slow
def test_ctrl_c_finishes_cleanly_and_the_rerun_resumes(tmp_path):
    server = ScriptedServer()
    try:
        data = sums_recipe(tmp_path, server.url, generate={"problems": 20}, hike={"enabled": False})
        recipe, out = write_recipe(tmp_path / "recipe.yaml", data), tmp_path / "run"
        server.hold_after(30)  # mid base.solve
        proc = cli(recipe, out)
        end = time.monotonic() + 120
        while not (server.total_answered >= 30 and recorded_calls(out) == server.total_answered):
            assert time.monotonic() < end and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130, stderr[-2000:]
        assert "stopped in base.solve; what finished is saved" in stderr
        assert recorded_calls(out) == server.total_answered  # nothing answered was lost
        server.release()
        rerun = cli(recipe, out)
        _, stderr = rerun.communicate(timeout=300)
        assert rerun.returncode == 0, stderr[-2000:]
        assert set(server.answered.values()) == {1}
    finally:
        server.stop()
