"""Adaptive speculation (engine/spec/adaptive.py): the policy on synthetic timings, and the engine
switching tree sizes, speculation on and off, mid-request with many requests in flight, while
output stays token-identical to plain decoding (fp32)."""

import itertools

import pytest
import torch

from reasonrl.engine import SamplingParams
from reasonrl.engine.spec.adaptive import COST_WINDOW, AdaptiveConfig, AdaptivePolicy, StepLog, TreeShape, bucket_of, ladder

from tests.spec.test_spec_engine import assert_same, demo, engine, plain_run, run  # noqa: F401  (demo is a fixture)


def test_ladder_halves_the_tree_down_to_a_chain_then_none():
    shapes = ladder(8, 6, 32)
    assert shapes[0] == TreeShape(8, 6, 32)
    assert [s.num_nodes for s in shapes[:-1]] == [32, 16, 8, 4, 2, 1]
    assert shapes[3] == TreeShape(1, 4, 4) and shapes[-2] == TreeShape(1, 1, 1)  # chains at the bottom
    assert shapes[-1] is None
    assert [bucket_of(n) for n in (1, 2, 3, 8, 9, 64)] == [1, 2, 4, 8, 16, 64]


def simulate(policy, num_seqs, cost, steps, prefill_every=3):
    """Drive the policy with a cost model: cost(rung, rows) -> (seconds, accepted tokens per
    sequence); every `prefill_every`-th step also prefills 40 rows (continuous batching)."""
    chosen = []
    for i in range(steps):
        rung = policy.choose(num_seqs)
        chosen.append(rung)
        shape = policy.shapes[rung]
        tree_rows = num_seqs * (0 if shape is None else shape.num_nodes)
        prefill_rows = 40 if i % prefill_every == 0 else 0
        seconds, accepted = cost(rung, num_seqs + tree_rows + prefill_rows)
        verified = 0 if shape is None else num_seqs
        policy.observe(StepLog(num_seqs, rung, prefill_rows, tree_rows, round(accepted * verified), verified), seconds)
    return chosen


def costs(per_row, overhead, num_seqs, per_tree=0.0):
    """A step costs overhead + per_row * rows, a tree step per_tree more per sequence (its
    bookkeeping); a tree of m draft tokens accepts 1 + 5 (1 - 0.8^m) tokens."""
    shapes = ladder(8, 6, 32)

    def cost(rung, rows):
        shape = shapes[rung]
        seconds = overhead + per_row * rows + (0 if shape is None else per_tree * num_seqs)
        return seconds, 1.0 if shape is None else 1 + 5 * (1 - 0.8 ** shape.num_nodes)

    return cost


def test_policy_switches_speculation_off_under_load_and_keeps_trees_when_rows_are_cheap():
    policy = AdaptivePolicy(ladder(8, 6, 32), AdaptiveConfig(explore_every=4))
    # batch 1: a step is all overhead, extra rows nearly free -> a large tree wins
    chosen = simulate(policy, 1, costs(per_row=1e-5, overhead=1e-2, num_seqs=1), steps=60)
    assert policy.shapes[chosen[-1]] is not None and policy.shapes[chosen[-1]].num_nodes >= 16
    # 64 in flight: compute-bound, every drafted row costs a real one -> no tree
    chosen = simulate(policy, 64, costs(per_row=1e-3, overhead=1e-2, num_seqs=64, per_tree=5e-4), steps=200)
    assert policy.buckets[64].best == policy.off
    tail = chosen[-100:]
    assert tail.count(policy.off) >= 95  # trials back off: few steps are spent on losing trees
    assert policy.stats()["spec_tree_tokens_at_batch_64"] == 0 and policy.stats()["spec_tree_tokens_at_batch_1"] >= 16


def test_policy_turns_trees_back_on_when_they_start_to_pay():
    policy = AdaptivePolicy(ladder(8, 6, 32), AdaptiveConfig(explore_every=4, max_explore_every=16))
    simulate(policy, 8, costs(per_row=1e-3, overhead=1e-3, num_seqs=8, per_tree=5e-4), steps=100)
    assert policy.buckets[8].best == policy.off
    simulate(policy, 8, costs(per_row=1e-5, overhead=1e-2, num_seqs=8), steps=150)  # the load went away
    assert policy.buckets[8].best != policy.off


def test_max_batch_and_disabled_policy():
    shapes = ladder(4, 3, 8)
    assert AdaptivePolicy(shapes, AdaptiveConfig(max_batch=4)).choose(5) == len(shapes) - 1
    assert AdaptivePolicy(shapes, AdaptiveConfig(enabled=False)).choose(64) == 0
    with pytest.raises(ValueError, match="acceptance_window"):
        AdaptiveConfig(acceptance_window=0)
    with pytest.raises(ValueError, match="explore_every must be a positive integer, got True"):  # a YAML "yes"
        AdaptiveConfig(explore_every=True)


class Cycling:
    """A stand-in policy: rung i % len(ladder) at step i, so every tree size and 'none' follow
    each other mid-request; with `skip_features`, every fourth step without a tree skips the
    draft's features, so drafts restart their contexts mid-request too."""

    def __init__(self, shapes, order, skip_features=False):
        self.shapes, self.off, self.order = shapes, len(shapes) - 1, itertools.cycle(order)
        self.seen = set()
        self.features = itertools.cycle([True, True, True, not skip_features])

    def wants_features(self, num_seqs):
        return next(self.features)

    def resting(self, num_seqs):  # every step runs the bookkeeping
        return False

    def choose(self, num_seqs):
        rung = next(self.order)
        self.seen.add(rung)
        return rung

    def observe(self, *args):
        pass

    def stats(self):
        return {}


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_switching_tree_sizes_mid_request_with_many_in_flight_stays_exact(demo, temperature):
    policy_model, _, draft, prompts = demo
    reqs = {str(i): (p, SamplingParams(temperature=temperature, top_p=0.95, max_tokens=64, seed=7 + i), {})
            for i, p in enumerate(prompts[:12])}
    plain = plain_run(policy_model, reqs)
    e = engine(policy_model, draft, max_model_len=256, max_num_batched_tokens=96)
    n = len(e.speculator.shapes)
    e.speculator.policy = Cycling(e.speculator.shapes, [0, n - 1, n - 1, 3, n - 2, 1, n - 1, 2], skip_features=True)
    assert_same(plain, run(e, reqs))
    stats = e.stats()
    assert stats["spec_rounds"] > 0 and stats["spec_steps_without_trees"] > 0 and stats["kv_blocks_used"] == 0
    assert {0, 1, 2, 3, n - 2, n - 1} <= e.speculator.policy.seen


def test_adaptive_engine_stays_exact_and_learns(demo):
    """The real policy, on the real clock: whatever it picks, greedy output is plain greedy's."""
    policy_model, _, draft, prompts = demo
    reqs = {str(i): (p, SamplingParams(temperature=0, max_tokens=48), {}) for i, p in enumerate(prompts)}
    plain = plain_run(policy_model, reqs)
    e = engine(policy_model, draft, max_model_len=256, draft_adaptive=True, draft_explore_every=2)
    assert_same(plain, run(e, reqs))
    assert e.speculator.policy.buckets  # it measured steps
    assert any(k.startswith("spec_tree_tokens_at_batch_") for k in e.stats())


def test_a_draft_that_fell_far_behind_restarts_its_context_and_stays_exact(demo, monkeypatch):
    from reasonrl.engine.spec import speculator

    monkeypatch.setattr(speculator, "MAX_LAG", 3)
    policy_model, _, draft, prompts = demo
    reqs = {str(i): (p, SamplingParams(temperature=0, max_tokens=48), {}) for i, p in enumerate(prompts[:8])}
    plain = plain_run(policy_model, reqs)
    e = engine(policy_model, draft, max_model_len=256)
    n = len(e.speculator.shapes)
    e.speculator.policy = Cycling(e.speculator.shapes, [0] + [n - 1] * 5)  # five steps without trees: lag > 3
    assert_same(plain, run(e, reqs))
    assert e.stats()["spec_accepted_length"] > 1.5  # the restarted draft still drafts


def test_a_tree_must_beat_no_tree_by_the_margin():
    """Trees a few percent ahead of no tree (within timing noise) are not switched to; trees well
    ahead are."""
    def best(ahead):
        # one tree size, a 1-token chain accepting 2 tokens per step, at 4 sequences; a plain step
        # costs 10 ms + 0.1 ms per row, a tree step `extra` more, set so that the tree's rate is
        # `ahead` times no tree's
        plain = lambda rows: 1e-2 + 1e-4 * rows  # noqa: E731
        extra = 2 * plain(4) / ahead - plain(8)
        policy = AdaptivePolicy(ladder(1, 1, 1), AdaptiveConfig(explore_every=2, margin=0.05))
        # prompts every 4th step: with every 3rd, each no-tree step of the 6-step cycle (one step, then a
        # trial of 1 + 3) carried 40 prompt rows, the row price was never fitted, and no tree never measured
        simulate(policy, 4, lambda rung, rows: (plain(rows) + (extra if rung == 0 else 0), 2.0 if rung == 0 else 1.0),
                 steps=60, prefill_every=4)
        return policy.buckets[4].best

    assert best(ahead=1.03) == 1  # no tree: 3% is inside the margin
    assert best(ahead=1.3) == 0


def test_larger_buckets_do_not_try_trees_once_a_smaller_one_runs_without():
    policy = AdaptivePolicy(ladder(8, 6, 32), AdaptiveConfig(explore_every=4))
    lose = costs(per_row=1e-3, overhead=1e-3, num_seqs=8, per_tree=5e-4)
    simulate(policy, 8, lose, steps=100)
    assert policy.buckets[8].best == policy.off
    chosen = simulate(policy, 32, costs(per_row=1e-3, overhead=1e-3, num_seqs=32, per_tree=5e-4), steps=100)
    assert set(chosen) == {policy.off}  # not a single trial step at 32


def test_a_stretch_of_large_batches_does_not_switch_batch_one_off():
    """Costs are measured per batch size: on a CPU a step of a few rows costs its fixed overhead
    while a step of hundreds costs per row, and a stretch at 64 in flight (where trees lose) leaves
    batch 1 with the tree it had."""
    def cpu(rows):  # fixed cost up to ~40 rows, then per row
        return 4e-3 + 2e-5 * rows + 1e-4 * max(rows - 40, 0)

    def cost(rung, rows):
        shape = ladder(8, 6, 32)[rung]
        return cpu(rows) + (0 if shape is None else 3e-3), 1.0 if shape is None else 1 + 5 * (1 - 0.8 ** shape.num_nodes)

    policy = AdaptivePolicy(ladder(8, 6, 32), AdaptiveConfig(explore_every=4))
    simulate(policy, 1, cost, steps=60)
    before = policy.buckets[1].best
    assert policy.shapes[before] is not None
    simulate(policy, 64, cost, steps=300)
    assert policy.buckets[64].best == policy.off
    chosen = simulate(policy, 1, cost, steps=60)
    assert policy.buckets[1].best != policy.off and chosen[-20:].count(policy.off) <= COST_WINDOW  # one trial


def test_acceptance_is_learned_from_drafts_that_saw_the_whole_sequence():
    """A draft whose context restarted (features resumed after a stretch without trees) accepts
    less; its step teaches the cost of the tree but not its acceptance, once a whole-sequence
    draft has been seen, so a trial after a stretch without trees is judged on what the tree does."""
    policy = AdaptivePolicy(ladder(1, 1, 1), AdaptiveConfig())
    policy.rows.add(1, 1e-3)
    policy.rows.add(41, 2e-3)
    policy.observe(StepLog(1, 0, tree_rows=1, cold_emitted=1, cold_verified=1), 1.5e-3)
    assert policy.accepted[0] == 1.0  # nothing else known: the cold draft's figure stands in
    policy.observe(StepLog(1, 0, tree_rows=1, emitted=2, verified=1), 1.5e-3)
    policy.observe(StepLog(1, 0, tree_rows=1, cold_emitted=1, cold_verified=1), 1.5e-3)
    assert policy.accepted[0] == 2.0  # the whole-sequence figure replaced it; the second cold step is ignored
    assert policy.buckets[1].cost[0] == pytest.approx(1.5e-3)


def test_prompt_rows_in_a_step_are_charged_at_the_price_of_a_row():
    policy = AdaptivePolicy(ladder(1, 1, 1), AdaptiveConfig())
    policy.observe(StepLog(0, policy.off, prefill_rows=40), 5e-3)  # prefill only: 1 ms + 0.1 ms per row
    policy.observe(StepLog(2, policy.off, prefill_rows=30, tree_rows=0), 1e-3 + 32e-4)  # the slope is now known
    policy.observe(StepLog(2, policy.off, prefill_rows=0), 1e-3 + 2e-4)
    assert policy.rows.slope() == pytest.approx(1e-4)
    assert policy.buckets[2].cost[policy.off] == pytest.approx((1e-3 + 2e-4) / 2)


def test_batch_one_starts_with_the_full_tree_and_an_off_bucket_tries_its_smaller_neighbours_tree():
    """Batch 1 starts with the full tree even when a bucket at 2 in flight came first and runs
    without trees (a warm-up of two requests did that to the demo VLM: batch 1 inherited "off" and
    only ever tried a 1-token chain on drafts that had missed their prompts). A bucket without
    trees and nothing measured tries the tree its next smaller bucket runs, not the smallest."""
    policy = AdaptivePolicy(ladder(8, 6, 32), AdaptiveConfig(explore_every=4))
    policy.choose(2)
    assert policy.buckets[2].best == policy.off
    policy.choose(1)
    assert policy.buckets[1].best == 0
    policy.buckets[1].best = 2  # batch 1 settled on an 8-token tree
    assert policy._round(policy.buckets[2]) == [2]
    assert policy._round(policy._bucket(4)) == []  # 4 starts off like 2 and, above it, makes no trials



def test_the_policy_learns_from_the_tokens_a_sequence_keeps_not_those_past_its_end(demo):
    """A stop string ends answers mid-tree: the tokens accepted past it count for the accepted
    length (the draft proposed them well) but not for the policy (they add nothing to the output)."""
    policy_model, tok, draft, prompts = demo
    # the full tree every step, not the clock's choice; a tokenizer: stop strings are read in the text
    e = engine(policy_model, draft, tokenizer=tok, max_model_len=256, max_num_seqs=2)
    seen, record = [], e.speculator.record
    e.speculator.record = lambda seq, verdict, used: seen.append((len(verdict.tokens), used)) or record(seq, verdict, used)
    logs, observe = [], e.speculator.policy.observe
    e.speculator.policy.observe = lambda log, seconds: logs.append(log) or observe(log, seconds)
    reqs = {str(i): (p, SamplingParams(temperature=0, max_tokens=64, stop=["="]), {}) for i, p in enumerate(prompts[:8])}
    run(e, reqs)
    assert any(used < n for n, used in seen)  # some trees ran past the stop
    assert sum(log.emitted + log.cold_emitted for log in logs) == sum(used for _, used in seen)
    assert e.stats()["spec_emitted_tokens"] == sum(n for n, _ in seen) > sum(used for _, used in seen)


def _tree_ahead() -> AdaptivePolicy:
    """Batch 1 running a 1-token chain that emits 2 tokens in 1.5 ms (1,333 tokens/s) against no tree's
    1 token in 1 ms, long settled: its next trial is far off."""
    policy = AdaptivePolicy(ladder(1, 1, 1), AdaptiveConfig())
    for _ in range(3):
        policy.observe(StepLog(1, policy.off), 1e-3)
        policy.observe(StepLog(1, 0, tree_rows=1, emitted=2, verified=1), 1.5e-3)
    b = policy.buckets[1]
    b.queue, b.countdown, b.interval = [], 500, 512
    assert b.best == 0
    return policy


def _run(policy, steps: int, tree_seconds: float, off_seconds: float) -> list[int]:
    chosen = []
    for _ in range(steps):
        rung = policy.choose(1)
        chosen.append(rung)
        tree = rung == 0
        policy.observe(StepLog(1, 0, tree_rows=1, emitted=2, verified=1) if tree else StepLog(1, policy.off),
                       tree_seconds if tree else off_seconds)
    return chosen


def test_one_slow_step_does_not_flip_a_bucket_two_do_and_the_rung_it_left_is_looked_at_again():
    """Step costs are medians of the last three: a pause of the host in one step (20x) leaves the
    choice alone. Two in a row switch the bucket, and the rung it left is measured afresh within
    COST_WINDOW steps: the pause is over by then, and the bucket goes back (it had stayed on the
    losing side until its next trial, hundreds of steps on)."""
    tree = StepLog(1, 0, tree_rows=1, emitted=2, verified=1)
    policy = _tree_ahead()
    policy.observe(tree, 30e-3)
    assert policy.buckets[1].best == 0 and policy.buckets[1].cost[0] == pytest.approx(1.5e-3)
    policy.observe(tree, 30e-3)  # two slow steps in a row: no tree wins for now
    assert policy.buckets[1].best == policy.off
    chosen = _run(policy, 3 * COST_WINDOW, tree_seconds=1.5e-3, off_seconds=1e-3)
    assert 0 in chosen[:COST_WINDOW] and policy.buckets[1].best == 0
    assert chosen[2 * COST_WINDOW:] == [0] * COST_WINDOW
    assert policy.buckets[1].interval == 512  # a second look is not an exploration: the interval stands


def test_a_rung_that_really_got_slower_stays_left_after_its_second_look():
    policy = _tree_ahead()
    chosen = _run(policy, 4 * COST_WINDOW, tree_seconds=30e-3, off_seconds=1e-3)  # the tree stays slow
    assert policy.buckets[1].best == policy.off and chosen[-COST_WINDOW:] == [policy.off] * COST_WINDOW


def test_a_bucket_settled_without_trees_measures_no_tree_only_before_its_next_trial():
    """Between trials a bucket without trees keeps no figures (its bookkeeping was about 5% of a
    batch-1 step of the demo policy); the COST_WINDOW steps before a trial measure no tree afresh."""
    policy = AdaptivePolicy(ladder(1, 1, 1), AdaptiveConfig())
    for _ in range(3):
        policy.observe(StepLog(1, 0, tree_rows=1, emitted=2, verified=1), 2.5e-3)
        policy.observe(StepLog(1, policy.off), 1e-3)
    b = policy.buckets[1]
    b.queue, b.countdown = [], 500
    assert b.best == policy.off
    for _ in range(5):
        policy.observe(StepLog(1, policy.off), 30e-3)  # a long pause: nothing learned, nothing flips
    assert b.best == policy.off and list(b.samples[policy.off]) == [1e-3] * 3
    b.countdown = COST_WINDOW  # the last steps before a trial
    for _ in range(COST_WINDOW):
        policy.observe(StepLog(1, policy.off), 0.5e-3)
    assert b.cost[policy.off] == pytest.approx(0.5e-3)


def test_a_trial_of_no_tree_is_judged_on_fresh_steps_not_on_the_first():
    """A bucket running trees measures no tree only in trials, and the first step after a tree is
    slow (caches hold the draft's weights): judged on that one step, batch 1 of the demo policy
    stayed on 16-token trees at 0.86x of plain decoding. A trial of no tree runs `COST_WINDOW` steps."""
    policy = AdaptivePolicy(ladder(1, 1, 1), AdaptiveConfig(explore_every=4))
    tree = StepLog(1, 0, tree_rows=1, emitted=2, verified=1)
    policy.observe(tree, 2.5e-3)  # 2 tokens in 2.5 ms: 800 tokens/s, the tree batch 1 starts with
    steps = []
    for _ in range(12):
        rung = policy.choose(1)
        steps.append(rung)
        first = rung == policy.off and steps[-2:-1] != [policy.off]
        # no tree: 1 token in 1 ms (1,000 tokens/s), but 3 ms right after a tree step
        policy.observe(tree if rung == 0 else StepLog(1, policy.off), 2.5e-3 if rung == 0 else 3e-3 if first else 1e-3)
    assert steps[:4] == [0, policy.off, policy.off, policy.off]  # one tree step, then the trial: three steps
    # off, but for a trial of the tree (its first step warms up, then COST_WINDOW are measured)
    assert policy.buckets[1].best == policy.off and steps[4:].count(0) <= COST_WINDOW + 1


def test_a_resting_bucket_skips_the_speculators_bookkeeping(demo):
    """Settled without trees and far from its next trial, a step costs the speculator a bucket
    lookup: no step log, no measurement, no features; output unchanged."""
    policy_model, _, draft, prompts = demo
    reqs = {str(i): (p, SamplingParams(temperature=0, max_tokens=32), {}) for i, p in enumerate(prompts[:3])}
    plain = plain_run(policy_model, reqs)
    e = engine(policy_model, draft, max_model_len=256, max_num_seqs=1, draft_adaptive=True)
    policy = e.speculator.policy
    b = policy._bucket(1)
    b.best, b.queue, b.countdown, b.interval = policy.off, [], 10 ** 6, 512
    logs, observe = [], policy.observe
    policy.observe = lambda log, seconds: logs.append(log) or observe(log, seconds)
    handed = []  # features handed to the draft
    e.speculator.observe = lambda *args: handed.append(args)
    e.speculator.observe_row = lambda *args: handed.append(args)
    got = run(e, reqs)
    assert_same(plain, got)
    assert logs and all(log.num_seqs == 0 for log in logs)  # only the prefill steps were logged
    decode_steps = sum(len(o.outputs[0].token_ids) - 1 for o in got.values())
    assert e.stats()["spec_steps_without_trees"] == decode_steps > 0 and not handed
    assert policy.resting(1) and not policy.resting(2)  # a bucket not yet seen has everything to learn


def test_a_tree_that_wins_is_kept_though_its_first_step_after_a_stretch_without_trees_is_slow():
    """The first step of either kind after a switch is slow (caches, a restarted draft context).
    Trials run three steps, so one slow first step does not lose a tree that is a third faster
    (judged on that step alone, as one-step trials were, it was left for good)."""
    policy = AdaptivePolicy(ladder(1, 1, 1), AdaptiveConfig(explore_every=4))
    chosen, last = [], None
    for _ in range(400):
        rung = policy.choose(1)
        first = rung != last
        tree = rung == 0
        seconds = 3e-3 if first else 1.5e-3 if tree else 1e-3  # tree: 2 tokens in 1.5 ms; none: 1 in 1 ms
        policy.observe(StepLog(1, 0, tree_rows=1, emitted=2, verified=1) if tree else StepLog(1, policy.off), seconds)
        chosen.append(rung)
        last = rung
    assert policy.buckets[1].best == 0 and chosen[-200:].count(0) >= 190


def test_prompts_prefilled_while_resting_leave_their_blocks_features_for_later_requests(demo):
    """A bucket settled without trees hands the draft no features, but a prompt's full blocks still
    leave theirs: a later request served those blocks by the prefix cache drafts from position 0
    (whole context) once trees run, not from past the cached prefix (a cold draft, accepting less),
    which had lasted for as long as the prefix stayed cached."""
    policy_model, _, draft, prompts = demo
    first, again = prompts[0], prompts[0] + []  # the same prompt: its blocks come from the cache
    reqs = {"a": (first, SamplingParams(temperature=0, max_tokens=8), {})}
    e = engine(policy_model, draft, max_model_len=256, max_num_seqs=1, draft_adaptive=True)
    policy, spec, bs = e.speculator.policy, e.speculator, e.block_manager.block_size
    b = policy._bucket(1)
    b.best, b.queue, b.countdown, b.interval = policy.off, [], 10 ** 6, 512
    run(e, reqs)
    assert len(spec.block_features) == len(first) // bs  # the prompt's full blocks, no draft state
    with torch.no_grad():
        hidden = policy_model.forward_padded(torch.tensor([first]))[0]  # the target's final hidden states
    torch.testing.assert_close(torch.cat(list(spec.block_features.values())), hidden[: len(first) // bs * bs],
                               atol=1e-4, rtol=1e-4)
    b.best, b.countdown = 0, 10 ** 6  # now trees run
    starts, start = [], spec._start
    spec._start = lambda seq, at: starts.append((at, s := start(seq, at))) or s
    out = run(e, {"b": (again, SamplingParams(temperature=0, max_tokens=8), {})})
    assert out["b"].num_cached_tokens >= bs and starts[0][0] == out["b"].num_cached_tokens
    assert starts[0][1].first == 0  # the draft's context starts at the prompt's first token
    assert_same(plain_run(policy_model, {"b": reqs["a"]}), out)


@pytest.mark.parametrize("opt_out", [{"speculative": False}, {"repetition_penalty": 1.1}])
def test_a_prompt_first_prefilled_by_a_request_that_does_not_speculate_leaves_its_blocks_features(demo, opt_out):
    """A request that opts out (speculative=False, penalties, a grammar) handed the draft nothing,
    not even its prompt's full blocks: a later speculating request served them by the prefix cache
    drafted cold, from past the cached prefix (17% fewer tokens accepted in the review's probe)."""
    policy_model, _, draft, prompts = demo
    e = engine(policy_model, draft, max_model_len=256, max_num_seqs=1)
    spec, bs = e.speculator, e.block_manager.block_size
    run(e, {"a": (prompts[0], SamplingParams(temperature=0, max_tokens=4, **opt_out), {})})
    assert len(spec.block_features) == len(prompts[0]) // bs
    starts, start = [], spec._start
    spec._start = lambda seq, at: starts.append((at, s := start(seq, at))) or s
    out = run(e, {"b": (prompts[0] + [], SamplingParams(temperature=0, max_tokens=8), {})})
    assert out["b"].num_cached_tokens >= bs and starts[0][1].first == 0  # the draft sees the whole prompt


def test_kept_block_features_drop_the_least_recently_used_first(demo):
    """A block a draft started from is the last to be dropped: a shared system prompt's blocks,
    stored first and served to every later request, must outlive blocks nobody asked for again."""
    policy_model, _, draft, prompts = demo
    e = engine(policy_model, draft, max_model_len=256, max_num_seqs=1)
    spec, bs = e.speculator, e.block_manager.block_size
    run(e, {"a": (prompts[0], SamplingParams(temperature=0, max_tokens=4), {})})
    oldest = next(iter(spec.block_features))
    spec.max_block_features = len(spec.block_features)
    assert spec._cached_block(oldest) is not None  # a hit, as a later request's draft start makes
    spec._store_block(-1, torch.zeros(bs, policy_model.config.hidden_size))  # one over the cap
    assert oldest in spec.block_features and len(spec.block_features) == spec.max_block_features


def test_a_chunked_prompt_keeps_only_the_blocks_a_draft_can_start_behind(demo):
    """Chunks of 10 rows over blocks of 4: the first chunk leaves blocks 0-1; the second starts
    inside block 2, whose features no chunk saw whole, so a draft could never start past it and
    nothing after it is kept (it would only push useful blocks out)."""
    policy_model, _, draft, prompts = demo
    e = engine(policy_model, draft, max_model_len=256, max_num_seqs=1, draft_adaptive=True, max_num_batched_tokens=10)
    policy, spec = e.speculator.policy, e.speculator
    b = policy._bucket(1)
    b.best, b.queue, b.countdown, b.interval = policy.off, [], 10 ** 6, 512
    assert len(prompts[1]) > 20
    run(e, {"a": (prompts[1], SamplingParams(temperature=0, max_tokens=4), {})})
    assert len(spec.block_features) == 2


def test_a_bucket_without_trees_walks_down_to_a_small_tree_that_pays():
    """Where large trees cost more than they gain but a small one pays (extra rows dear, a step's
    overhead not), a bucket that left the full tree for none tries smaller trees, one rung per
    round, and settles on one that beats no tree (it never tried them, and ran without trees, before)."""
    policy = AdaptivePolicy(ladder(8, 6, 32), AdaptiveConfig(explore_every=4, max_explore_every=16))
    cost = costs(per_row=1e-3, overhead=1e-3, num_seqs=1)  # rates: none 500, 2 tokens 700, 32 tokens 176
    chosen = simulate(policy, 1, cost, steps=400, prefill_every=10**9)
    best = policy.buckets[1].best
    assert policy.shapes[best] is not None and policy.shapes[best].num_nodes <= 4
    assert chosen[-50:].count(best) >= 30  # the rest: trials of its neighbours and of no tree


def test_acceptance_is_the_mean_over_the_newest_verified_sequences():
    """At batch 1 a step is one sequence, whose kept tokens swing from 1 to the tree's depth: a
    rung's acceptance is the mean over its newest `acceptance_window` sequences, not a running
    average that the last few steps of a short trial move (the EMA before held the demo policy's
    4-token chain at 2.5-2.9 tokens where it keeps 4.3, and batch 1 never ran it)."""
    policy = AdaptivePolicy(ladder(1, 4, 4), AdaptiveConfig(acceptance_window=8))
    kept = [5, 1, 5, 1, 5, 1, 5, 1, 1, 1]
    for k in kept:
        policy.observe(StepLog(1, 0, tree_rows=4, emitted=k, verified=1), 1e-3)
    assert policy.accepted[0] == pytest.approx(sum(kept[-8:]) / 8)  # 2.5 (the EMA: 2.0)
    policy.observe(StepLog(4, 0, tree_rows=16, emitted=20, verified=4), 1e-3)  # a step weighs its sequences
    assert policy.accepted[0] == pytest.approx((sum(kept[-4:]) + 20) / 8)


def _tree_trial_after_no_tree():
    """Batch 1 without trees (1 token in 1 ms), a trial of the 1-token chain starting: (policy, bucket)."""
    policy = AdaptivePolicy(ladder(1, 1, 1), AdaptiveConfig(explore_every=4))
    for _ in range(COST_WINDOW):
        policy.observe(StepLog(1, policy.off), 1e-3)
    b = policy.buckets[1]
    b.best, b.queue, b.trial, b.trial_steps = policy.off, [], 0, 0
    b.cost.pop(0, None)
    return policy, b


def test_a_tree_trials_first_step_warms_up_and_is_not_measured():
    """The first tree step after a stretch without trees is slow (the draft's weights are out of the
    caches, its context restarts): a tree trial runs one step more than COST_WINDOW and drops its
    first from the cost, so two slow steps at its start (that step and a request's first tree
    step, which carries the prompt's catch-up) do not decide the trial through the median."""
    policy, b = _tree_trial_after_no_tree()
    seconds = [3e-3, 3e-3, 1.5e-3, 1.5e-3]  # 2 tokens a step: 1,333 tokens/s once warm, against 1,000
    for step, t in enumerate(seconds, 1):
        policy.observe(StepLog(1, 0, tree_rows=1, emitted=2, verified=1), t)
        if b.trial is None:
            break
    # settled on the median of 3e-3, 1.5e-3, 1.5e-3: the tree (on the first three steps: no tree)
    assert step == COST_WINDOW + 1 and list(b.samples[0]) == seconds[1:] and b.best == 0


def test_the_warm_up_is_the_tree_trials_first_step_that_drafts():
    """A tree trial's step in which no sequence drafted (no room, say) ran as no tree: it is not the
    warm-up, and the first step that drafts still is (it was measured before)."""
    policy, b = _tree_trial_after_no_tree()
    policy.observe(StepLog(1, 0), 1e-3)  # the tree's rung, nothing drafted
    for t in (3e-3, 1.5e-3, 1.5e-3):
        policy.observe(StepLog(1, 0, tree_rows=1, emitted=2, verified=1), t)
    assert b.trial is None and list(b.samples[0]) == [1.5e-3, 1.5e-3] and b.best == 0
