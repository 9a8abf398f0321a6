"""A `reasonrl train --ray` process killed with SIGKILL resumes from its checkpoint and APRIL buffer.

The run joins the test session's Ray cluster (`cluster.address`); killing the driver ends its job,
and Ray frees its actors and bundles for the rerun."""

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from reasonrl.rl.checkpoint import latest_checkpoint, load_trainer_state
from reasonrl.rl.metrics import read_metrics


def recipe(policy_dir, run_dir, address):
    return {"model": {"path": str(policy_dir)}, "env": {"name": "letter", "eval_size": 4},
            "rollout": {"max_tokens": 32, "prompts_per_step": 4, "samples_per_prompt": 4, "over_provision": 2.0},
            "engine": {"kv_cache_memory": 1 << 24, "max_num_seqs": 4},  # few slots: groups are cut mid-way
            "optim": {"lr": 1e-2}, "train": {"run_dir": str(run_dir), "steps": 3, "save_every": 1},
            "cluster": {"ray": True, "address": address, "engines": 2, "trainers": 2, "placement_timeout": 120}}


def start(path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, "-m", "reasonrl.cli", "train", str(path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_a_killed_ray_run_resumes_with_its_buffer(ray_cluster, policy_dir, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(recipe(policy_dir, tmp_path / "run", ray_cluster.get_runtime_context().gcs_address)))
    proc = start(path)
    deadline = time.time() + 300
    while latest_checkpoint(tmp_path / "run") is None:
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = latest_checkpoint(tmp_path / "run")
    assert load_trainer_state(killed_at)["rollout"]["april"]["buffer"]  # partial groups in the checkpoint
    resumed = start(path)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()[-3000:]
    rows = [r for r in read_metrics(tmp_path / "run") if "reward_mean" in r]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["dropped_groups"] == 0 for r in rows)
    first_after = int(killed_at.name.removeprefix("step_")) + 1
    assert rows[first_after - 1]["resumed_samples"] > 0  # the buffer's partial samples resumed after the kill
    assert latest_checkpoint(tmp_path / "run").name == "step_000003"
