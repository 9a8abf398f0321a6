"""`EnginePool`: the rollout backend over N engine actors; APRIL runs over it unchanged.

APRIL (rollout/april.py) submits its over-provisioned groups, polls, and aborts all at once; the
pool spreads that over the engines:

- Each request goes to the live engine with the fewest outstanding tokens (rollout/balance.py):
  prefill plus the decode budget of its requests, less the tokens they have generated since. Resumed partial samples
  (shorter budgets) thus fill whichever engine is free, whichever engine began them.
- `abort_all` aborts on every engine at once and returns each request with its tokens.
- Every poll brings back the new tokens and behaviour log-probs of running requests. When an
  actor dies, its requests are resubmitted to the others from those partial tokens (token level:
  their log-probs kept; restarted when nothing had been generated), and, with
  `cluster.restart_engines`, a fresh actor with the current weights takes its place. No sample is
  lost; tokens generated after the dead actor's last report are generated again.
- `sync` puts the new state dict once into Ray's object store (shared memory on a node, fetched once
  per node) and every engine loads it and resets its prefix cache; an engine replacing a dead one
  loads the same object. With `cluster.weight_sync: broadcast`, trainer rank 0 sends the weights to
  every engine in one collective instead (weight_sync.py: NCCL between GPUs, gloo on CPU).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from reasonrl.engine.config import EngineConfig
from reasonrl.engine.sampling_params import SamplingParams
from reasonrl.engine.sequence import CompletionOutput
from reasonrl.models.chat import token_ids
from reasonrl.rollout.backend import Finished, RolloutBackend
from reasonrl.rollout.balance import LeastOutstanding
from reasonrl.scale.cluster import Cluster
from reasonrl.scale.engine_worker import EngineWorker


@dataclass
class Request:
    """A request handed to an engine, with every token the pool has heard of (for a resume elsewhere)."""
    key: str
    prompt: object
    params: SamplingParams
    output_ids: list[int]
    output_logprobs: list[float]
    engine: int

    def submission(self) -> tuple:
        return self.key, self.prompt, self.params, list(self.output_ids), list(self.output_logprobs)

    def aborted(self) -> CompletionOutput:
        return CompletionOutput(0, list(self.output_ids), list(self.output_logprobs), "", "abort", seed=self.params.seed or 0)


@dataclass
class Engine:
    index: int  # its bundle slot
    actor: object
    queued: list[tuple] = field(default_factory=list)  # submissions not yet sent
    collecting: object = None  # the ObjectRef of its collect() in flight


class EnginePool(RolloutBackend):
    def __init__(self, cluster: Cluster, model_path: str, engine_cfg: EngineConfig, dtype: str | None = None,
                 poll_wait: float = 0.05, engines: int | None = None, reserve_bytes: int = 0):
        """`engines`: use the first this many engine bundles of the cluster (default: all of them);
        `reserve_bytes`: device memory each engine leaves to the trainer rank beside it (EngineWorker)."""
        self.ray, self.cluster, self.poll_wait = cluster.ray, cluster, poll_wait
        self.colocated = cluster.cfg.placement == "colocated"
        self.spec = (model_path, engine_cfg, cluster.device, dtype, cluster.cfg.engine_threads, reserve_bytes)
        self.actor_cls = self.ray.remote(EngineWorker)
        self.engines = [self._start(i) for i in range(engines or cluster.cfg.engines)]
        self.balance = LeastOutstanding([e.index for e in self.engines])
        self.requests: dict[str, Request] = {}
        self.weights, self.version = None, 0  # the ObjectRef of the last synced state dict
        self.policy = None  # the policy last synced
        self.source = None  # trainer rank 0's actor when weights go by broadcast (cluster.weight_sync)
        self.members: list | None = None  # the engines of the current broadcast group
        self.counters = {"engine_deaths": 0, "engine_restarts": 0, "recovered_samples": 0, "recovered_tokens": 0}

    def _start(self, index: int) -> Engine:
        actor = self.actor_cls.options(**self.cluster.options("engine", index)).remote(*self.spec)
        return Engine(index, actor)

    # ---- samples ----------------------------------------------------------------------------
    def submit(self, key, prompt_ids, params, output_ids, output_logprobs) -> None:
        self._assign(Request(key, prompt_ids, params, list(output_ids), list(output_logprobs), -1))

    def _assign(self, request: Request) -> None:
        cost = len(token_ids(request.prompt)) + request.params.max_tokens
        request.engine = self.balance.place(request.key, cost)
        self._engine(request.engine).queued.append(request.submission())
        self.requests[request.key] = request

    def _flush(self) -> None:
        for e in self.engines:
            if e.queued:
                e.actor.submit.remote(e.queued)  # ordered before the collect() that follows on the same actor
                e.queued = []

    def poll(self) -> list[Finished]:
        self._flush()
        for e in self.engines:
            if e.collecting is None and self.balance.count(e.index):
                e.collecting = e.actor.collect.remote(self.poll_wait)
        waiting = {e.collecting: e for e in self.engines if e.collecting is not None}
        if not waiting:
            return []
        ready, rest = self.ray.wait(list(waiting), num_returns=1, timeout=1.0)
        if ready and rest:
            ready += self.ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        finished: list[Finished] = []
        for ref in ready:
            finished += self._receive(waiting[ref], ref)
        return finished

    def _receive(self, engine: Engine, ref, resubmit: bool = True) -> list[Finished]:
        engine.collecting = None
        try:
            done, progress = self.ray.get(ref)
        except self.ray.exceptions.RayActorError:
            self._lost(engine, resubmit)
            return []
        for key, (ids, logprobs) in progress.items():
            request = self.requests.get(key)
            if request is None:
                continue
            request.output_ids += ids
            request.output_logprobs += logprobs
            self.balance.progress(key, len(ids))
        return [(key, out) for key, out in done if self._retire(key)]

    def _retire(self, key: str) -> bool:
        if self.requests.pop(key, None) is None:
            return False
        self.balance.done(key)
        return True

    def _engine(self, index: int) -> Engine:
        return next(e for e in self.engines if e.index == index)

    def abort_all(self) -> list[Finished]:
        """Abort on every engine at once; each request comes back with its tokens."""
        self._flush()
        finished = []
        for e in list(self.engines):  # a dead engine leaves the list: every other one is still read
            if e.collecting is not None:  # its requests come back aborted below, not queued on another
                finished += self._receive(e, e.collecting, resubmit=False)
        aborts = {e.index: e.actor.abort_all.remote() for e in self.engines if self.balance.count(e.index)}
        for index, ref in aborts.items():
            try:
                finished += [(key, out) for key, out in self.ray.get(ref) if self._retire(key)]
            except self.ray.exceptions.RayActorError:
                self._lost(self._engine(index), resubmit=False)
        finished += [(r.key, r.aborted()) for r in list(self.requests.values()) if self._retire(r.key)]
        return finished

    # ---- faults -----------------------------------------------------------------------------
    def _lost(self, engine: Engine, resubmit: bool = True) -> None:
        """An actor died: replace it (if configured), and resume its requests on the live engines."""
        self.counters["engine_deaths"] += 1
        orphans = [self.requests.pop(k) for k in self.balance.remove(engine.index)]
        self.engines.remove(engine)
        print(f"reasonrl: engine actor {engine.index} died with {len(orphans)} requests; resuming them elsewhere",
              file=sys.stderr, flush=True)
        if self.cluster.cfg.restart_engines:
            self.engines.append(self._replace(engine.index))
        if not self.engines:
            raise RuntimeError("every rollout engine actor died (cluster.restart_engines is off)")
        for request in orphans:
            self.counters["recovered_samples"] += 1
            self.counters["recovered_tokens"] += len(request.output_ids)
            if resubmit:
                self._assign(request)
            else:
                self.requests[request.key] = request  # returned as aborted by abort_all

    def _replace(self, index: int) -> Engine:
        self.counters["engine_restarts"] += 1
        engine = self._start(index)
        self.balance.add(index)
        if self.source is not None and self.policy is not None:  # broadcast syncs leave no object to load
            self.weights = self.ray.put(_cpu_state(self.policy))
        if self.weights is not None:
            engine.actor.set_weights.remote(self.weights, self.version)  # runs before any submit to it
        return engine

    # ---- weights, memory, counters ----------------------------------------------------------
    def sync(self, policy, version: int) -> None:
        self.policy, self.version = policy, version
        if self.source is not None and self._broadcast(version):
            return
        self.weights = self.ray.put(_cpu_state(policy))
        self._each("set_weights", self.weights, version)

    def _broadcast(self, version: int) -> bool:
        """Trainer rank 0 broadcasts to every engine (weight_sync.py); False when an engine died meanwhile
        (the group is rebuilt at the next sync; this one goes through the object store). A death during
        the broadcast stalls it until the group's timeout (weight_sync.py), then the run goes on."""
        members = [e.actor for e in self.engines]
        try:
            if self.members != members:  # first sync, or an engine was replaced: a new group
                address, world = self.ray.get(self.source.rendezvous.remote()), len(members) + 1
                dtypes = self.ray.get(members[0].weight_dtypes.remote())  # every engine loads the same spec
                self.ray.get([self.source.join_broadcast.remote(address, world, dtypes)] + [
                    a.join_broadcast.remote(address, i + 1, world, self.cluster.device) for i, a in enumerate(members)])
                self.members = members
            self.ray.get([self.source.broadcast_weights.remote()] + [a.receive_weights.remote(version) for a in members])
            return True
        except self.ray.exceptions.RayError:  # an engine died; the others' receives fail at the group's timeout
            self.members = None
            dead = [e for e in self.engines if not _alive(self.ray, e.actor)]
            if not dead:
                raise
            for engine in dead:
                self._lost(engine)
            return False

    def _each(self, method: str, *args) -> list:
        """Call `method` on every engine and wait; a dead one is replaced (and called again)."""
        refs = [(e, getattr(e.actor, method).remote(*args)) for e in self.engines]
        out = []
        for engine, ref in refs:
            try:
                out.append(self.ray.get(ref))
            except self.ray.exceptions.RayActorError:
                self._lost(engine)
                if self.cluster.cfg.restart_engines:  # the replacement is the last engine
                    out.append(self.ray.get(getattr(self.engines[-1].actor, method).remote(*args)))
        return out

    def prepare(self) -> None:
        if self.colocated:
            self._each("wake")

    def release(self) -> None:
        if self.colocated:  # the trainer rank on the same device gets the KV memory
            self._each("sleep")

    @property
    def num_running(self) -> int:
        return len(self.requests)

    def stats(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for s in self._each("stats"):
            for k, v in s.items():
                totals[k] = totals.get(k, 0) + v
        totals.pop("version", None)
        return {**totals, **self.counters, "engines": len(self.engines)}

    def close(self) -> None:
        for e in self.engines:
            self.ray.kill(e.actor)
        self.engines = []


def _cpu_state(policy) -> dict:
    return {k: v.detach().cpu() for k, v in policy.state_dict().items()}


def _alive(ray, actor) -> bool:
    try:
        ray.get(actor.stats.remote(), timeout=30)
        return True
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return False
