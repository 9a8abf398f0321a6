"""Speedup statistics on synthetic timings, and the timing protocol run end to end on the CPU
(interpreted kernels: the numbers mean nothing, the protocol and its defences are what is tested)."""

import dataclasses
import math

import pytest

from reasonrl.envs.kernels.evaluate import EvaluatorConfig, KernelEvaluator
from reasonrl.envs.kernels.evaluate.speed import Bench, Schedule
from reasonrl.envs.kernels.evaluate.speedup import apply_timing, timing_job
from reasonrl.envs.kernels.evaluate.timing import (KernelResult, TimingConfig, aggregate, reject_outliers,
                                                   round_order, speedup, summarize)
from reasonrl.envs.kernels.evaluate.verdict import Verdict
from reasonrl.envs.kernels.suite import get_task


def test_rounds_interleave_and_alternate():
    parties = ("reference", "expert", "candidate")
    assert round_order(parties, 0) == list(parties)
    assert round_order(parties, 1) == list(parties)[::-1]
    assert round_order(parties, 2) == list(parties)


def test_outliers_are_rejected_and_means_use_the_rest():
    samples = [1.0, 1.01, 0.99, 1.02, 0.98, 1.0, 25.0]  # one preempted call
    assert reject_outliers(samples) == samples[:-1]
    stats = summarize(samples)
    assert stats["rejected"] == 1 and stats["samples"] == 7
    assert stats["mean_ms"] == pytest.approx(1.0, abs=1e-9) and stats["cv"] < 0.02
    assert reject_outliers([1.0, 100.0]) == [1.0, 100.0]  # too few to judge


def test_speedup_is_total_reference_over_total_candidate():
    assert speedup([2.0, 6.0], [1.0, 3.0]) == 2.0
    assert speedup([1.0], [4.0]) == 0.25


def test_aggregate_reports_four_ways_and_keeps_flagged():
    results = [KernelResult("a", True, 2.0, 1.5), KernelResult("b", True, 0.5, 0.4), KernelResult("c", False),
               KernelResult("d", True, 12.0, 11.0)]
    out = aggregate(results)
    assert out["mean_speedup_correct"] == pytest.approx((2.0 + 0.5 + 12.0) / 3)  # GEAK's mean, 12x kept
    assert out["geomean_speedup"] == pytest.approx(math.exp((math.log(2) + math.log(0.5) + 0 + math.log(12)) / 4))
    assert out["fast_0"] == 0.75 and out["fast_1"] == 0.5 and out["fast_2"] == 0.25
    assert out["faster_than_expert"] == 2 and out["flagged"] == ["d"]
    assert Verdict("d", "passed", speedup=12.0).flags == ["speedup>=10x"]


def test_apply_timing_fills_speedups_or_fails_at_scale():
    passed = Verdict("t", "passed", "ok")
    samples = {"reference": [[2.0] * 5], "expert": [[1.0] * 5], "candidate": [[0.5] * 5]}
    timed = apply_timing(passed, {"samples": samples, "mismatch": None, "error": None})
    assert timed.speedup == 4.0 and timed.expert_speedup == 2.0 and timed.exec_ok
    wrong = apply_timing(passed, {"samples": samples, "mismatch": "timing shape (9,): off", "error": None})
    assert wrong.status == "wrong_output" and "at scale" in wrong.message
    failed = apply_timing(passed, {"samples": samples, "mismatch": None, "error": "TimeoutError: slow"})
    assert failed.exec_ok and failed.speedup is None and failed.flags[0].startswith("timing failed")


PATCH_TIMERS = '''
import time, torch
time.perf_counter_ns = lambda: 0
time.perf_counter = lambda: 0.0
torch.cuda.synchronize = lambda *a: None
'''
CACHE_BY_POINTER = '''
_cache = dict()
_real = vector_add

def vector_add(x, y):
    key = (x.data_ptr(), y.data_ptr())
    if key not in _cache:
        _cache[key] = _real(x, y)
    return _cache[key]
'''


@pytest.mark.slow
def test_timing_protocol_end_to_end_on_cpu():
    task = dataclasses.replace(get_task("vector_add"), perf_shapes=((1000,), (3001,)))
    config = TimingConfig(warmup=1, reps=2, rounds=2, input_sets=2, flush_cache=False)
    expert = task.expert_source()
    with KernelEvaluator(EvaluatorConfig(workers=1)) as evaluator:
        honest = evaluator.run_timing(timing_job(task, expert, config))
        patched = evaluator.run_timing(timing_job(task, PATCH_TIMERS + expert, config))
        cached = evaluator.run_timing(timing_job(task, expert + CACHE_BY_POINTER, config))
    for answer in (honest, patched):
        assert answer["error"] is None and answer["mismatch"] is None
        for party in ("reference", "expert", "candidate"):
            assert [len(s) for s in answer["samples"][party]] == [4, 4]  # rounds x reps, per shape
            assert all(ms > 0 for s in answer["samples"][party] for ms in s)  # the patched clock is not ours
    assert cached["mismatch"].startswith("timing shape (1000,)")  # same pointers, new contents: the cache answers stale


def test_no_two_timed_calls_see_the_same_inputs_and_the_checked_ones_are_drawn_at_random():
    """Three input sets rotated: from the fourth timed call on, a memo keyed on the inputs' contents
    answered every call from its memo, and only the last call on each set was checked."""
    import torch

    config = dataclasses.asdict(TimingConfig(warmup=2, reps=5, rounds=4, input_sets=2, checked_calls=3))
    seen = []

    def record(x, n):
        seen.append((tuple(x.tolist()), n))
        return x * 2

    sets = [(torch.tensor([1.0, 2.0]), 7), (torch.tensor([3.0, 4.0]), 7)]
    bench = Bench(record, sets, "cpu", flush=False)
    bench.warm_up(config["warmup"])
    seen.clear()
    schedules = [Schedule(config, shapes=1) for _ in range(2)]
    for r in range(config["rounds"]):
        (plan,) = schedules[0].round(r, "candidate")
        assert len(bench.run(plan["calls"], plan["keep"])) == config["reps"]
    assert len(seen) == 20 and len(set(seen)) == 20  # every timed call met contents no other call had
    assert {n for _, n in seen} == {7}  # non-tensor arguments are passed as they are
    (kept,) = schedules[0].kept
    assert len(kept) == len(bench.kept) == 3
    for (j, scale), out in zip(kept, bench.kept):  # what the reference process recomputes
        assert torch.equal(out, sets[j][0] * scale * 2)
    assert schedules[0].checked != schedules[1].checked or schedules[0].kept != schedules[1].kept
    assert all(plan["keep"] == [] for r in range(4) for plan in schedules[0].round(r, "expert"))


CACHE_BY_CONTENTS = '''
_memo = {}
_honest = vector_add

def vector_add(x, y):
    key = (tuple(x.view(-1)[:4].tolist()), tuple(y.view(-1)[:4].tolist()))
    if key not in _memo:
        _memo[key] = _honest(x, y)
    return _memo[key]
'''


def test_a_memo_on_the_inputs_contents_never_hits_and_a_stale_answer_fails():
    """(That the memo never hits is the schedule's: no two timed calls meet the same contents, tested
    above; how fast it runs is a timing figure, not asserted here.)"""
    task = dataclasses.replace(get_task("vector_add"), perf_shapes=((20000,),))
    config = TimingConfig(warmup=3, reps=3, rounds=2, input_sets=3, flush_cache=False)
    key = "(tuple(x.view(-1)[:4].tolist()), tuple(y.view(-1)[:4].tolist()))"
    stale = task.expert_source() + CACHE_BY_CONTENTS.replace(key, "x.shape")  # computed once, on the warm-up's inputs
    with KernelEvaluator(EvaluatorConfig(workers=1)) as evaluator:
        memo = evaluator.run_timing(timing_job(task, task.expert_source() + CACHE_BY_CONTENTS, config))
        stale_answer = evaluator.run_timing(timing_job(task, stale, config))
    assert memo["error"] is None and memo["mismatch"] is None  # a memo that never hits answers right
    assert stale_answer["mismatch"].startswith("timing shape (20000,), a timed call on input set")


@pytest.mark.gpu
def test_expert_speedups_on_a_gpu():
    tasks = [get_task(t) for t in ("vector_add", "softmax", "matmul")]
    with KernelEvaluator(EvaluatorConfig(workers=1, device="cuda")) as evaluator:
        verdicts = evaluator.evaluate_many([(t, t.expert_source()) for t in tasks])
    for v in verdicts:
        assert v.exec_ok and v.speedup and v.speedup > 0 and 0.5 < v.expert_speedup < 2.0, v
