"""`EnginePool.abort_all` when an engine died mid-collect: every other engine's collect is still read
(finished samples kept), and the dead one's requests come back aborted, not queued on another engine
behind the pool's back. A stand-in for Ray (the pool's own code runs); no cluster needed."""

from types import SimpleNamespace

from reasonrl.engine.sampling_params import SamplingParams
from reasonrl.engine.sequence import CompletionOutput
from reasonrl.rollout.balance import LeastOutstanding
from reasonrl.scale.engine_pool import Engine, EnginePool, Request


class ActorDied(Exception):
    pass


class Ref:
    def __init__(self, value=None, error=None):
        self.value, self.error = value, error


class FakeRay:
    exceptions = SimpleNamespace(RayActorError=ActorDied)

    def get(self, ref, timeout=None):
        if ref.error:
            raise ref.error
        return ref.value


class Actor:
    def __init__(self, answers):
        self.answers = answers

    def __getattr__(self, name):
        return SimpleNamespace(remote=lambda *args: Ref(self.answers.get(name)))


def test_a_dead_engine_during_abort_skips_no_other_engine_and_requeues_nothing():
    pool = object.__new__(EnginePool)  # the pool's state, without a cluster behind it
    pool.ray, pool.cluster = FakeRay(), SimpleNamespace(cfg=SimpleNamespace(restart_engines=False))
    pool.engines = [Engine(i, Actor({"abort_all": []})) for i in range(3)]
    pool.balance, pool.requests = LeastOutstanding([0, 1, 2]), {}
    pool.counters = dict.fromkeys(("engine_deaths", "engine_restarts", "recovered_samples", "recovered_tokens"), 0)
    for i in range(3):
        request = Request(f"k{i}", [1, 2, 3], SamplingParams(max_tokens=8, seed=1), [], [], -1)
        request.engine = pool.balance.place(request.key, 11)
        pool.requests[request.key] = request
    pool.engines[0].collecting = Ref(error=ActorDied("engine 0 died"))
    pool.engines[1].collecting = Ref(([("k1", CompletionOutput(0, [5] * 8, [-0.1] * 8, "", "length", seed=1))], {}))
    pool.engines[2].collecting = Ref(([], {"k2": ([7, 7], [-0.2, -0.2])}))
    out = dict(pool.abort_all())
    assert out["k1"].finish_reason == "length" and len(out["k1"].token_ids) == 8  # came back aborted with 0 tokens
    assert out["k2"].finish_reason == "abort" and out["k2"].token_ids == [7, 7]
    assert out["k0"].finish_reason == "abort"  # the dead engine's request, returned to be resumed next step
    assert all(e.collecting is None and not e.queued for e in pool.engines)  # k0 was left queued on engine 1
    assert pool.requests == {}
