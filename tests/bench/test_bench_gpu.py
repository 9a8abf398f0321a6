import json
import time

import pytest

from reasonrl.bench import gpu
from reasonrl.bench.gpu import GpuBenchConfig, bench_gpu, format_table
from reasonrl.cli import main


@pytest.mark.slow
def test_bench_gpu_smoke_writes_every_part_and_the_table(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert main(["bench", "gpu", "--smoke", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["smoke"] is True and list(r["parts"]) == ["engine", "kv-decode", "spec", "april", "kernels"]
    for name, part in r["parts"].items():
        assert part["status"] == "ok", (name, part.get("error"))
        assert part["seconds"] >= 0
    assert r["parts"]["engine"]["result"]["eager"]["engine_tokens_per_s"] > 0  # the same-run eager arm
    assert r["parts"]["kv-decode"]["result"][0]["format"] == "dense"
    printed = capsys.readouterr().out
    assert "| april | APRIL / synchronous rollout throughput |" in printed
    assert "| spec | speculative speedup at batch 1 |" in printed
    kernels = r["parts"]["kernels"]["result"]  # the sandboxed evaluator, on this CPU under the interpreter
    assert {t: v["status"] for t, v in kernels["per_task"].items()} == {"vector_add": "passed", "softmax": "passed"}
    assert "| kernels | kernel experts passing in the GPU sandbox | 2 of 2 | all |" in printed


def test_the_kernels_part_stops_between_tasks_and_says_which_were_not_judged():
    from reasonrl.agents.geak.agent import resolve_tasks
    from reasonrl.bench.kernels import expert_speedups

    asked = []
    r = expert_speedups(resolve_tasks("vector_add,softmax"), 60.0, "cpu",
                        stop=lambda: asked.append(1) or len(asked) > 1)
    assert list(r["per_task"]) == ["vector_add"] and r["not_run"] == ["softmax"]
    assert r["summary"]["tasks"] == 1 and r["summary"]["correct"] == 1


def test_the_kernels_part_keeps_what_it_judged_when_the_budget_runs_out_mid_task(monkeypatch):
    from reasonrl.agents.geak.agent import resolve_tasks
    from reasonrl.bench.kernels import expert_speedups
    from reasonrl.envs.kernels.evaluate import KernelEvaluator

    judge, calls = KernelEvaluator.evaluate_many, []

    def alarm_on_the_second(self, jobs):
        calls.append(1)
        if len(calls) == 2:
            raise gpu.PartTimeout()  # what run_part's alarm raises
        return judge(self, jobs)

    monkeypatch.setattr(KernelEvaluator, "evaluate_many", alarm_on_the_second)
    r = expert_speedups(resolve_tasks("vector_add,softmax"), 60.0, "cpu", interrupt=(gpu.PartTimeout,))
    assert list(r["per_task"]) == ["vector_add"] and r["not_run"] == ["softmax"]


def test_kernel_failures_reach_the_table_with_their_message():
    result = {"per_task": {"vector_add": {"status": "passed", "speedup": 1.2, "flags": []},
                           "softmax": {"status": "forbidden", "speedup": None, "flags": [],
                                       "message": "the sandbox denied: ctypes.dlopen libcuda.so.1 from x:1 (f)"}},
              "summary": {"tasks": 2, "correct": 1, "geomean_speedup": 1.1, "mean_speedup_correct": 1.2, "fast_1": 0.5},
              "not_run": ["matmul"]}
    table = format_table({"device": "X", "seconds": 1.0, "smoke": False,
                          "parts": {"kernels": {"status": "ok", "result": result, "seconds": 1.0}}})
    assert "| kernels | kernel experts passing in the GPU sandbox | 1 of 2 | all |" in table
    assert "softmax: forbidden (the sandbox denied: ctypes.dlopen libcuda.so.1" in table
    assert "| kernels | not judged (the budget ran out) | 1 |" in table


def test_a_failing_part_records_its_error_and_the_others_still_run(monkeypatch):
    def broken(c):
        raise RuntimeError("no kernel today")

    monkeypatch.setitem(gpu.PARTS, "kv-decode", broken)
    r = bench_gpu(GpuBenchConfig(smoke=True, parts=["kv-decode", "spec"], device="cpu"))
    assert r["parts"]["kv-decode"]["status"] == "error"
    assert "RuntimeError: no kernel today" in r["parts"]["kv-decode"]["error"]
    assert r["parts"]["spec"]["status"] == "ok" and r["parts"]["spec"]["result"]["greedy_identical"] is True
    table = format_table(r)
    assert "| kv-decode | error | RuntimeError: no kernel today |" in table


def test_the_global_budget_stops_a_running_part_and_skips_the_rest(monkeypatch):
    def slow(c):
        try:
            time.sleep(30)
        except Exception:  # as the engine does with a step's error: the timeout must not be swallowed
            time.sleep(30)

    monkeypatch.setitem(gpu.PARTS, "engine", slow)
    monkeypatch.setitem(gpu.PARTS, "spec", lambda c: {"never": "run"})
    start = time.monotonic()
    r = bench_gpu(GpuBenchConfig(smoke=True, parts=["engine", "spec"], budget_s=1.5, device="cpu"))
    assert time.monotonic() - start < 25  # the part would sleep 30 s; generous for a loaded machine
    assert r["parts"]["engine"]["status"] == "timeout" and r["parts"]["engine"]["seconds"] < 25
    assert r["parts"]["spec"]["status"] == "skipped"


def test_unknown_parts_are_refused():
    with pytest.raises(ValueError, match="unknown part"):
        GpuBenchConfig(parts=["engine", "warp-drive"])


def test_a_device_that_is_not_there_still_writes_the_json(tmp_path, capsys):
    """`--device cuda` where CUDA fails: each part recorded its error, then naming the device raised
    and nothing was written (the april part's 51 s of work included)."""
    out = tmp_path / "gpu.json"
    assert main(["bench", "gpu", "--device", "cuda", "--parts", "kv-decode", "spec", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["device"].startswith("cuda (unavailable") and {p["status"] for p in r["parts"].values()} == {"error"}
