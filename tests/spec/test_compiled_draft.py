"""The draft's tree step compiled (engine/spec/grow.py): output unchanged, compiled at start-up,
a step that compiled kept out of the adaptive policy, eager when compiling fails."""

import pytest
import torch

from reasonrl.engine.spec.adaptive import AdaptivePolicy, StepLog, ladder
from reasonrl.engine.spec.grow import GrowStep, graph_count, grow_step
from tests.spec.test_spec_engine import assert_same, demo, engine, greedy_requests, plain_run, run  # noqa: F401  (demo is a fixture)


@pytest.mark.slow
def test_a_compiled_draft_compiles_at_start_and_leaves_greedy_output_unchanged(demo):
    policy_model, _, draft, prompts = demo
    reqs = greedy_requests(prompts[:6])
    plain = plain_run(policy_model, reqs)
    eager = engine(policy_model, draft, max_model_len=256, max_num_seqs=2, cpu_draft_kernel=False)
    compiled = engine(policy_model, draft, max_model_len=256, max_num_seqs=2, draft_compile=True, cpu_draft_kernel=False)
    assert not engine(policy_model, draft, max_model_len=256, draft_compile=True).stats()["spec_draft_compiled"]  # the kernel first
    stats = compiled.stats()
    assert stats["spec_draft_compiled"] and stats["spec_draft_compile_seconds"] > 0
    assert not eager.stats()["spec_draft_compiled"]
    graphs = graph_count()
    assert_same(plain, run(compiled, reqs))
    assert graph_count() == graphs  # batches of 1 and 2, every depth: all compiled at start-up
    assert_same(plain, run(eager, reqs))
    # the compiled draft proposes what the eager one does, up to rounding: about as many accepted
    assert abs(compiled.stats()["spec_accepted_length"] - eager.stats()["spec_accepted_length"]) < 0.5


def test_a_step_that_compiled_teaches_the_policy_nothing_and_its_trial_runs_again():
    policy = AdaptivePolicy(ladder(8, 6, 32))
    rung = policy.choose(1)
    policy.observe(StepLog(1, rung, tree_rows=32, emitted=5, verified=1, built=True), 30.0)  # a 30 s compile
    assert policy.buckets[1].cost == {} and policy.rate(1, rung) is None
    policy.observe(StepLog(1, rung, tree_rows=32, emitted=5, verified=1), 0.01)
    assert policy.rate(1, rung) == pytest.approx(5 / 0.01)


def test_a_draft_whose_compile_fails_runs_eager_with_the_same_result(demo, caplog):
    _, _, draft, _ = demo
    c = draft.config
    step = GrowStep(draft, compile=False)
    step.fn = lambda *args: (_ for _ in ()).throw(RuntimeError("no C++ compiler"))  # as a failed compile raises
    rows = torch.zeros(1, 3, c.num_kv_heads, c.head_dim)
    args = (2, torch.tensor([5, 6]), torch.randn(2, c.hidden_size), torch.tensor([3, 3]), rows, rows, torch.tensor([3]),
            torch.ones(1, 2, 2, dtype=torch.bool), None, None)
    with torch.no_grad():
        out = step(*args)
        expected = grow_step(draft, *args)
    assert not step.compiled and "runs eager" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(out, expected))
