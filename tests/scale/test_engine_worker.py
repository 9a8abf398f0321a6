"""The engine actor's own logic, without Ray: what reaches the driver when a request is refused or
the stepping thread fails (both made a Ray run wait forever)."""

import time

import pytest

from reasonrl.engine.config import EngineConfig
from reasonrl.engine.sampling_params import SamplingParams
from reasonrl.scale.engine_worker import EngineWorker


def params(**kw):
    return SamplingParams(**{"temperature": 1.0, "seed": 1, "max_tokens": 8, "detokenize": False, **kw})


def drain(worker, keys, seconds=300):
    done, deadline = {}, time.monotonic() + seconds
    while set(done) != set(keys) and time.monotonic() < deadline:
        done.update(dict(worker.collect(0.05)[0]))
    return done


def test_a_refused_request_is_raised_by_the_next_collect_and_the_batch_still_runs(policy_dir):
    worker = EngineWorker(str(policy_dir), EngineConfig(kv_cache_memory=1 << 24, max_model_len=32), "cpu", None, 1)
    try:
        worker.submit([("long", list(range(5, 45)), params(), [], []), ("ok", [5, 6, 7], params(), [], [])])
        with pytest.raises(ValueError, match="'long'.*max_model_len=32"):
            worker.collect(0.5)
        assert drain(worker, ["ok"])["ok"].finish_reason == "length"  # the rest of the batch was added and ran
    finally:
        worker.close()


def test_a_failed_step_is_raised_to_every_later_call_instead_of_hanging(policy_dir):
    worker = EngineWorker(str(policy_dir), EngineConfig(kv_cache_memory=1 << 24), "cpu", None, 1)
    schedule, calls = worker.engine.scheduler.schedule, []

    def flaky():  # an error past step isolation (the scheduler, a draft's proposal)
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory (injected)")
        return schedule()

    worker.engine.scheduler.schedule = flaky
    try:
        worker.submit([("a", [5, 6, 7], params(max_tokens=16), [], [])])
        worker.thread.join(120)
        assert not worker.thread.is_alive()
        for call in (lambda: worker.collect(0.05), worker.abort_all, worker.stats):
            with pytest.raises(RuntimeError, match="stepping thread failed.*out of memory"):
                call()
    finally:
        worker.stopped = True
