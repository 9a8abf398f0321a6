"""`reasonrl bench kernels` on a few tasks: every way of judging agrees, the rates and the CPU share are there."""

import json

import pytest

from reasonrl.bench.kernels import KernelBenchConfig, bench_kernels
from reasonrl.cli import main
from reasonrl.envs.kernels.evaluate.inprocess import evaluate_in_process
from reasonrl.envs.kernels.suite import get_task


def test_in_process_judging_matches_the_sandbox():
    task = get_task("flip")
    assert evaluate_in_process(task, task.expert_source()).status == "passed"
    assert evaluate_in_process(task, task.expert_source().replace("cols - 1 - c", "c")).status == "wrong_output"


@pytest.mark.slow
def test_bench_kernels_reports_rates_and_cpu_share(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "kernels", "--tasks", "vector_add,flip,lgamma", "--repeats", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["tasks"] == 3 and result["cpu_share"] == pytest.approx(2 / 3)
    assert list(result["not_on_this_cpu"]) == ["lgamma"]
    (run,) = result["runs"]
    for way in ("serial", "sandboxed_1", "sandboxed_2"):
        assert run[way]["verdicts"] == 2 and run[way]["passed"] == 2 and run[way]["per_minute"] > 0
    assert run["parallel_over_serial"] > 0 and "load_average" in run
    with pytest.raises(ValueError):
        KernelBenchConfig(workers=0)
