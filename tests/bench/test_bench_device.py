"""Every workload's result names its device, with `--threads`' count (docs/bench.md): the CPU-only ones too."""

import json

import pytest
import torch

from reasonrl.cli import main

SMALL = {
    "ttt": ["--games", "oTTT", "--n", "5", "--no-count", "--judgements", "50"],
    "math": ["--n", "20", "--workers", "1", "--hangs", "0"],
    "shapes-detector": ["--n", "3"],
}


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", SMALL)
def test_cpu_workloads_name_the_device_and_the_thread_count(name, tmp_path, keep_threads, capsys):
    out = tmp_path / "result.json"
    assert main(["bench", name, *SMALL[name], "--threads", "1", "--json", str(out)]) == 0
    device = json.loads(out.read_text())["device"]
    assert device.startswith("CPU ") and device.endswith(", 1 threads")
