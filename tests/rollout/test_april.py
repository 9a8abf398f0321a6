"""APRIL on a deterministic fake engine with heavy-tailed response lengths."""

import dataclasses
import math
import random

import pytest
import torch

from reasonrl.engine.sequence import CompletionOutput
from reasonrl.envs.base import Prompt
from reasonrl.rl.batch import collate
from reasonrl.rl.losses import LossConfig, get_loss, mask_stale_tokens
from reasonrl.rollout.april import AprilRollout
from reasonrl.rollout.config import RolloutConfig
from reasonrl.rollout.buffer import Group
from reasonrl.rollout.sample import Status


def target_length(seed: int, max_tokens: int) -> int:
    """Log-normal lengths (median 8, long tail); some hit max_tokens."""
    return max(1, min(max_tokens + 5, int(math.exp(math.log(8) + 1.2 * random.Random(seed).gauss(0, 1)))))


class FakeEngine:
    """One token per running request per poll; tokens and log-probs are functions of (seed,
    position), so a resumed request continues exactly as an uninterrupted one."""

    def __init__(self, max_running: int = 16):
        self.max_running = max_running
        self.reqs: dict[str, dict] = {}
        self.polls = self.polls_since_target = 0

    def submit(self, key, prompt_ids, params, output_ids, output_logprobs):
        assert key not in self.reqs
        self.reqs[key] = {"seed": params.seed, "max": params.max_tokens, "ids": list(output_ids),
                          "lps": list(output_logprobs)}

    def _out(self, key, reason):
        r = self.reqs.pop(key)
        return key, CompletionOutput(0, r["ids"], r["lps"], "", reason, None, None, r["seed"])

    def poll(self):
        self.polls += 1
        finished = []
        for key in list(self.reqs)[: self.max_running]:
            r = self.reqs[key]
            pos = len(r["ids"])
            r["ids"].append(random.Random(r["seed"] * 7919 + pos).randrange(100))
            r["lps"].append(-0.01 * (pos % 13 + 1))
            if len(r["ids"]) == target_length(r["seed"], r["max"]):
                finished.append(self._out(key, "stop"))
            elif len(r["ids"]) >= r["max"]:
                finished.append(self._out(key, "length"))
        return finished

    def abort_all(self):
        return [self._out(key, "abort") for key in list(self.reqs)]

    @property
    def num_running(self):
        return min(len(self.reqs), self.max_running)


def prompts():
    i = 0
    while True:
        yield Prompt(id=f"p{i}", messages=[{"role": "user", "content": str(i)}], answer=i)
        i += 1


def score(group: Group):
    for s in group.samples:
        s.reward = float(len(s.response_ids) % 3 == 0)  # a reward that varies within groups


def manager(ratio, max_running=16, n=4, g=4, max_tokens=40, seed=0, dynamic=False):
    spec = RolloutConfig(n, g, ratio, max_tokens, dynamic_sampling=dynamic)
    return AprilRollout(FakeEngine(max_running), spec, prompts(), lambda p: [1, 2, 3], score, seed)


def sync_reference(n, g, max_tokens, seed, steps):
    """Plain synchronous rollout written out directly: n fresh groups per step, run to the end."""
    rng = random.Random(seed)
    out = []
    for _ in range(steps):
        seeds = [[rng.randrange(1 << 62) for _ in range(g)] for _ in range(n)]
        engine = FakeEngine(max_running=16)
        for gi, row in enumerate(seeds):
            for si, sd in enumerate(row):
                engine.submit(f"{gi}:{si}", [1, 2, 3], type("P", (), {"seed": sd, "max_tokens": max_tokens})(), [], [])
        results = {}
        while engine.reqs:
            results.update(dict(engine.poll()))
        out.append([[results[f"{gi}:{si}"].token_ids for si in range(g)] for gi in range(n)])
    return out


def test_ratio_one_reproduces_synchronous_rollout_exactly():
    m = manager(1.0)
    reference = sync_reference(4, 4, 40, 0, steps=3)
    for step in range(3):
        groups, stats = m.collect(step, version=step)
        assert [[s.response_ids for s in g.samples] for g in groups] == reference[step]
        assert stats.buffered_groups == 0 and stats.dropped_groups == 0 and len(m.buffer) == 0


def test_no_completed_group_is_ever_lost():
    m = manager(2.0, max_running=12, n=3, g=4)
    seen: dict[int, int] = {}
    launched = 0
    for step in range(12):
        groups, stats = m.collect(step, version=step)
        assert stats.dropped_groups == 0
        assert len(groups) >= 3 and all(g.finished for g in groups)
        for g in groups:
            seen[g.group_id] = seen.get(g.group_id, 0) + 1
        launched = m.next_group_id
    assert all(v == 1 for v in seen.values())  # each group trained exactly once
    assert set(seen) | {g.group_id for g in m.buffer.groups} == set(range(launched))  # every group accounted for


def test_groups_finishing_together_past_the_target_are_all_kept():
    m = manager(3.0, max_running=100, n=2, g=2, max_tokens=3)  # every sample stops at <= 3 tokens: all finish at once
    groups, stats = m.collect(0, version=0)
    assert len(groups) == 6 and stats.done_groups == 6 and stats.dropped_groups == 0


def test_abort_follows_the_target_with_no_extra_engine_step():
    m = manager(2.0, max_running=32, n=2, g=4)
    engine = m.backend
    polls_at_target = []
    original = m._update

    def watch(live, done, key, out, version, stats, **kwargs):
        original(live, done, key, out, version, stats, **kwargs)
        if len(done) >= 2 and not polls_at_target:
            polls_at_target.append(engine.polls)

    m._update = watch
    m.collect(0, version=0)
    assert engine.polls == polls_at_target[0]


def test_resumed_samples_keep_their_tokens_logprobs_and_versions():
    m = manager(2.0, max_running=8, n=2, g=4, max_tokens=60)
    m.collect(0, version=0)
    partial = {(g.group_id, s.index): (list(s.response_ids), list(s.logprobs)) for g in m.buffer.groups
               for s in g.samples if s.response_ids and s.status == Status.ABORTED}
    assert partial, "the workload must leave partial samples"
    resumed = []
    for step in range(1, 6):
        groups, _ = m.collect(step, version=step)
        resumed += [(g, s) for g in groups for s in g.samples if (g.group_id, s.index) in partial]
    assert resumed
    for g, s in resumed:
        ids, lps = partial[(g.group_id, s.index)]
        assert s.response_ids[: len(ids)] == ids and s.logprobs[: len(lps)] == lps
        assert s.versions[: len(ids)] == [0] * len(ids) and s.versions[len(ids):] != []
        assert all(v >= 1 for v in s.versions[len(ids):])
        # the continuation is exactly what an uninterrupted run of this seed produces
        assert s.response_ids == [random.Random(s.seed * 7919 + p).randrange(100) for p in range(len(s.response_ids))]


def test_mask_mode_gives_exactly_zero_gradient_on_recycled_prefixes():
    m = manager(2.0, max_running=8, n=2, g=4, max_tokens=60)
    m.collect(0, version=0)
    groups = []
    for step in range(1, 4):
        groups += m.collect(step, version=3)[0] if step == 3 else m.collect(step, version=step)[0]
    samples = [s for g in groups for s in g.samples]
    assert any(0 in s.versions for s in samples)
    batch = collate(samples, [1.0 - 2 * (i % 2) for i in range(len(samples))], 0, "cpu")
    logp = (batch.behaviour_logp + 0.05).requires_grad_(True)
    mask = mask_stale_tokens(batch.mask, batch.versions, current_version=3)
    loss, _ = get_loss("grpo")(logp, logp.detach(), batch.behaviour_logp, batch.advantages, mask, LossConfig())
    loss.backward()
    stale = batch.mask & (batch.versions < 3)
    assert stale.any() and (logp.grad[stale] == 0).all()
    assert (logp.grad[batch.mask & (batch.versions == 3)] != 0).any()


def test_dynamic_sampling_refills_filtered_groups():
    m = manager(1.0, max_running=64, n=3, g=4, dynamic=True)
    groups, stats = m.collect(0, version=0)
    assert stats.filtered_groups > 0  # the fake reward makes some groups flat
    assert len(groups) >= 3 and all(len({s.reward for s in g.samples}) > 1 for g in groups)
    assert stats.dropped_groups == 0


def test_buffer_survives_a_checkpoint_round_trip():
    m = manager(2.0, max_running=8, n=2, g=4, max_tokens=60)
    m.collect(0, version=0)
    state = m.state_dict()
    m2 = manager(2.0, max_running=8, n=2, g=4, max_tokens=60)
    m2.load_state_dict(state)
    assert [g.to_dict() for g in m2.buffer.groups] == [g.to_dict() for g in m.buffer.groups]
    a, _ = m.collect(1, version=1)
    b, _ = m2.collect(1, version=1)
    assert [[s.response_ids for s in g.samples] for g in a] == [[s.response_ids for s in g.samples] for g in b]


def test_tail_idle_fraction_is_higher_for_synchronous_rollout():
    sync, april = manager(1.0, max_running=64, n=8, g=4), manager(2.0, max_running=64, n=8, g=4)
    idle_sync = sum(sync.collect(s, s)[1].tail_idle_fraction() for s in range(4))
    idle_april = sum(april.collect(s, s)[1].tail_idle_fraction() for s in range(4))
    assert idle_april < idle_sync


def test_replacement_groups_stop_once_the_target_is_met():
    """Dynamic sampling refills filtered groups only while the step still needs groups: none is
    launched in the poll that completes the step (its requests would be aborted before their first
    token), and never more than the step's group budget."""
    class Spy(FakeEngine):
        def __init__(self):
            super().__init__(max_running=16)
            self.submitted: list[tuple[int, str]] = []

        def submit(self, key, *args):
            self.submitted.append((self.polls, key))
            super().submit(key, *args)

    def half_flat(group: Group):
        score(group)
        if group.group_id % 2:  # every other group all-equal: filtered
            for s in group.samples:
                s.reward = 0.0

    late = 0
    for seed in range(20):
        engine = Spy()
        spec = RolloutConfig(4, 4, 2.0, 40, dynamic_sampling=True, max_groups_per_step=13)
        rollout = AprilRollout(engine, spec, prompts(), lambda p: [1, 2, 3], half_flat, seed)
        _, stats = rollout.collect(0, version=0)
        late += sum(1 for poll, _ in engine.submitted if poll == engine.polls and poll > 0)
        assert stats.launched_groups <= 13 and stats.dropped_groups == 0
    assert late == 0  # 16 requests over these seeds before the fix


class FailingEngine(FakeEngine):
    """Ends request `key` (finish_reason `reason`: "error", or "abort" as another client's /v1/abort
    on a shared server does; its tokens so far) at its 5th token, `times` times."""

    def __init__(self, key: str, times: int, reason: str = "error"):
        super().__init__(max_running=64)
        self.key, self.times, self.reason = key, times, reason

    def poll(self):
        failed = []
        r = self.reqs.get(self.key)
        if self.times and r is not None and len(r["ids"]) == 5:
            self.times -= 1
            failed.append(self._out(self.key, self.reason))
        return failed + super().poll()


@pytest.mark.parametrize("reason", ["error", "abort"])
def test_a_request_the_engine_fails_is_resubmitted_from_its_tokens(reason):
    """An abort the rollout did not ask for left its sample neither running nor done: collect() spun
    on an idle engine forever."""
    spec = RolloutConfig(4, 4, 1.0, 40)
    plain = AprilRollout(FakeEngine(64), spec, prompts(), lambda p: [1, 2, 3], score, 0)
    want, _ = plain.collect(0, version=0)
    engine = FailingEngine("1:2", times=2, reason=reason)  # long enough to reach 5 tokens
    assert target_length(want[1].samples[2].seed, 40) > 5
    failing = AprilRollout(engine, spec, prompts(), lambda p: [1, 2, 3], score, 0)
    got, stats = failing.collect(0, version=0)
    assert engine.times == 0 and failing.failures == {}  # two failures, then it finished: its count is gone
    assert [[s.response_ids for s in g.samples] for g in got] == [[s.response_ids for s in g.samples] for g in want]
    assert stats.dropped_groups == 0
    stuck = AprilRollout(FailingEngine("1:2", times=99, reason=reason), spec, prompts(), lambda p: [1, 2, 3], score, 0)
    with pytest.raises(RuntimeError, match=f"sample 1:2: the engine ended its request 4 times \\(finish_reason '{reason}'"):
        stuck.collect(0, version=0)


@pytest.mark.parametrize("dynamic", [False, True])
def test_rollout_throughput_counts_the_tokens_of_the_samples_trained_on(dynamic):
    """Every sample finished during the step was counted, also those of groups left in the buffer
    or filtered by dynamic sampling: APRIL's throughput figure was inflated (4%, 23% in a probe)."""
    m = manager(2.0, max_running=16, n=4, g=4, dynamic=dynamic)
    for step in range(4):
        groups, stats = m.collect(step, version=step)
        trained = sum(len(s.response_ids) for g in groups for s in g.samples)
        assert stats.as_dict()["rollout_tokens_per_s"] * stats.seconds == pytest.approx(trained)


@pytest.mark.parametrize("reason", ["error", "abort"])
def test_evaluation_asks_again_for_a_request_the_backend_failed(reason):
    """A held-out request that comes back with finish_reason "error" (an engine step that raised, a
    server's 5xx) or "abort" (someone else's) is not the model's answer: it was scored as one."""
    from reasonrl.envs.base import Environment
    from reasonrl.models.chat import ChatEncoder
    from reasonrl.models.tiny import make_tokenizer
    from reasonrl.rollout.manager import RolloutManager

    class AnyAnswer(Environment):
        def prompts(self, n=None, seed=0, split="train"):
            return [Prompt(id=f"q{i}", messages=[{"role": "user", "content": "say"}]) for i in range(n or 4)]

        def score(self, prompt, response):
            return float(bool(response))

    class Backend(FailingEngine):
        def submit(self, key, prompt_ids, params, output_ids, output_logprobs):
            super().submit(key, prompt_ids, dataclasses.replace(params, seed=1), output_ids, output_logprobs)

        def prepare(self):
            pass

        def release(self):
            pass

        def stats(self):
            return {}

    tok = make_tokenizer(["say one two three"] * 10, vocab_size=280)
    env = AnyAnswer()

    def evaluate(backend):
        return RolloutManager(backend, env, ChatEncoder(tok), RolloutConfig(2, 2, 1.0, 40)).evaluate(env.prompts(4))

    assert evaluate(Backend("eval:1", times=2, reason=reason))["accuracy"] == 1.0  # 0.75 before
    with pytest.raises(RuntimeError, match="evaluation request eval:1: the backend ended it 4 times"):
        evaluate(Backend("eval:1", times=99, reason=reason))


@dataclasses.dataclass
class Item:  # an environment's own answer object (ImageDoctor's JudgeItem is one)
    scores: dict
    nested: Prompt


def test_a_buffered_prompts_answer_keeps_its_type_through_a_checkpoint(tmp_path):
    """`asdict` turned a dataclass answer (and any dataclass inside it) into dicts: after a resume every
    buffered group's reward function raised on them and scored 0."""
    from reasonrl.rollout.buffer import PartialBuffer

    answer = Item({"overall": 0.5}, Prompt(id="inner", messages=[], answer=3))
    buffer = PartialBuffer()
    buffer.put(Group(7, Prompt(id="p", messages=[{"role": "user", "content": "x"}], answer=answer,
                               metadata={"item": answer}), [1, 2], [], born_step=2))
    torch.save(buffer.state_dict(), tmp_path / "state.pt")
    back = PartialBuffer()
    back.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=False))
    prompt = back.groups[0].prompt
    assert prompt.answer == answer and isinstance(prompt.answer.nested, Prompt)
    assert isinstance(prompt.metadata["item"], Item)


def test_an_evaluation_that_gives_up_leaves_nothing_in_the_engine(tmp_path):
    """Giving up while other held-out requests ran: release() put the engine to sleep with them in flight,
    and its "cannot sleep" error hid the real one."""
    from reasonrl.engine import LLMEngine
    from reasonrl.engine.config import EngineConfig
    from reasonrl.envs.base import Environment
    from reasonrl.models import load_model
    from reasonrl.models.chat import ChatEncoder
    from reasonrl.models.tiny import make_checkpoint, make_tokenizer
    from reasonrl.rollout.backend import EngineBackend
    from reasonrl.rollout.manager import RolloutManager

    class Say(Environment):
        def prompts(self, n=None, seed=0, split="train"):
            return [Prompt(id=f"q{i}", messages=[{"role": "user", "content": f"say {i}"}]) for i in range(n or 4)]

        def score(self, prompt, response):
            return 1.0

    class FailsOne(EngineBackend):  # eval:1 fails in its first step, every time
        def submit(self, key, prompt_ids, params, *args, **kw):
            if key == "eval:1":
                self.failing = key
                return
            super().submit(key, prompt_ids, dataclasses.replace(params, ignore_eos=True), *args, **kw)

        def poll(self):
            out = super().poll()
            if getattr(self, "failing", None):
                out.append((self.failing, CompletionOutput(0, [], [], "", "error")))
                self.failing = None
            return out

    tok = make_tokenizer(["say one two three four"] * 10, vocab_size=280)
    path = make_checkpoint(tmp_path / "m", "qwen2", tok, std=0.2, hidden_size=64, num_layers=2)
    engine = LLMEngine(load_model(path, "cpu"), tok, EngineConfig(kv_cache_memory=1 << 22, block_size=4))
    manager = RolloutManager(FailsOne(engine), Say(), ChatEncoder(tok), RolloutConfig(2, 2, 1.0, 40))
    with pytest.raises(RuntimeError, match="evaluation request eval:1: the backend ended it 4 times"):
        manager.evaluate(Say().prompts(4))
    assert not engine.requests


def test_a_rollout_phase_logs_the_engine_pools_counters():
    """Ray's EnginePool counts engines, deaths, restarts and recovered samples and tokens (docs/scale.md
    promises them in every step row); the manager kept only the speculative-decoding metrics."""
    from reasonrl.envs.base import Environment
    from reasonrl.models.chat import ChatEncoder
    from reasonrl.models.tiny import make_tokenizer
    from reasonrl.rollout.manager import RolloutManager

    class AnyAnswer(Environment):
        def prompts(self, n=None, seed=0, split="train"):
            return [Prompt(id=f"q{i}", messages=[{"role": "user", "content": "say"}]) for i in range(n or 4)]

        def score(self, prompt, response):
            return float(len(response) % 2)

    pool = {"engines": 2, "engine_deaths": 1, "engine_restarts": 1, "recovered_samples": 3, "recovered_tokens": 17}

    class Pool(FakeEngine):
        def prepare(self):
            pass

        def release(self):
            pass

        def stats(self):
            return {**pool, "running": 0}

    tok = make_tokenizer(["say one two three"] * 10, vocab_size=280)
    _, stats = RolloutManager(Pool(), AnyAnswer(), ChatEncoder(tok), RolloutConfig(2, 2, 1.0, 20)).collect(1, 0)
    assert {k: stats[k] for k in pool} == pool and "running" not in stats
