"""The kernel agent's loop with deterministic doubles for the LLM: repair from feedback, the
debugger, parallel trajectories and their metrics, retrieval and knowledge, the optimizer,
robustness to unparsable output, logging and resume by replay."""

import json

import pytest
from geak_doubles import FakeEvaluator, ScriptedLLM, fenced

from reasonrl.agents.geak import AgentConfig, Reply, run_agent
from reasonrl.envs.kernels.evaluate import EvaluatorConfig, KernelEvaluator, SandboxLimits, Verdict
from reasonrl.eval.client import EndpointError
from reasonrl.envs.kernels.suite import get_task

TASK = get_task("vector_add")
EXPERT = TASK.expert_source()
SYNTAX = "def vector_add(x, y)\n    return x\n"
WRONG = EXPERT.replace("x + y", "x - y")
BROKEN_THEN_FIXED = ["I think we should tile it, but I am not sure.", fenced(SYNTAX), fenced(WRONG), fenced(EXPERT)]


@pytest.fixture(scope="module")
def evaluator():
    with KernelEvaluator(EvaluatorConfig(workers=2), SandboxLimits(timeout=20.0)) as ev:
        yield ev


def config(tmp_path, **overrides):
    return AgentConfig(**{"endpoint": "http://unused", "model": "scripted", "out": str(tmp_path / "run"),
                          "tasks": "vector_add", "iterations": 6, **overrides})


def user_text(call):
    return call.messages[-1]["content"]


def test_broken_then_fixed_is_repaired_from_feedback(tmp_path, evaluator):
    llm = ScriptedLLM(lambda task, k, i: BROKEN_THEN_FIXED[min(i, 3)])
    summary = run_agent(config(tmp_path), llm, evaluator, progress=False)
    generations = [c for c in llm.calls if c.role == "generate"]
    assert len(generations) == 4 and len(llm.calls) == 8  # stops once solved: nothing to optimize on a CPU
    assert "no code block" in user_text(generations[1]) and "status: no_code" in user_text(generations[1])
    assert "import_error" in user_text(generations[2]) and "SyntaxError" in user_text(generations[2])
    assert "wrong_output" in user_text(generations[3]) and "x - y" in user_text(generations[3])
    assert "The mask on the last block is missing" in user_text(generations[3])  # the reflection is passed on
    assert summary["solved"] == 1 and summary["pass@1"] == 1.0
    assert [r["exec_any"] for r in summary["by_iteration"]] == [0, 0, 0, 1, 1, 1]
    assert [r["call_any"] for r in summary["by_iteration"]] == [0, 0, 1, 1, 1, 1]
    assert summary["cost"]["calls_per_solved"] == 8 and summary["cost"]["tokens_per_solved"] == 4 * 80 + 4 * 12
    assert summary["cost"]["unparsable_rate"] == 0.25
    rows = [json.loads(line) for line in (tmp_path / "run" / "candidates.jsonl").read_text().splitlines()]
    assert [r["verdict"]["status"] for r in rows] == ["no_code", "import_error", "wrong_output", "passed"]
    calls = [json.loads(line) for line in (tmp_path / "run" / "calls.jsonl").read_text().splitlines()]
    assert len(calls) == 8 and all(c["messages"] and "text" in c for c in calls)  # every call logged in full


def test_debugger_breaks_out_of_repeated_identical_errors(tmp_path, evaluator):
    llm = ScriptedLLM(lambda task, k, i: fenced(WRONG) if i < 5 else fenced(EXPERT))
    summary = run_agent(config(tmp_path, max_repeated_errors=3), llm, evaluator, progress=False)
    generations = [user_text(c) for c in llm.calls if c.role == "generate"]
    assert "x - y" in generations[2] and "Start over" not in generations[2]
    assert "Start over with a different approach" in generations[3] and "x - y" not in generations[3]
    assert summary["debugger_resets"] == 1 and summary["tasks_detail"]["vector_add"]["solved_at"] == [5]


def test_parallel_trajectories_give_the_scaling_curves(tmp_path, evaluator):
    solve_at = {0: None, 1: 2, 2: 0}  # trajectory -> iteration it first passes
    llm = ScriptedLLM(lambda task, k, i: fenced(EXPERT) if solve_at[k] is not None and i >= solve_at[k]
                      else fenced(WRONG))
    summary = run_agent(config(tmp_path, parallel=3, iterations=3, reflect=False), llm, evaluator, progress=False)
    assert summary["pass@1"] == pytest.approx(2 / 3) and summary["pass@2"] == 1.0 and summary["pass@3"] == 1.0
    assert summary["by_trajectories"] == [0.0, 1.0, 1.0]
    assert [r["exec_pass@1"] for r in summary["by_iteration"]] == pytest.approx([1 / 3, 1 / 3, 2 / 3])
    assert summary["cost"]["reflections"] == 0
    assert summary["tasks_detail"]["vector_add"]["solved_at"] == [None, 2, 0]


def test_one_shot_retrieval_and_knowledge_injection(tmp_path, evaluator):
    llm = ScriptedLLM(lambda task, k, i: fenced(EXPERT))
    run_agent(config(tmp_path / "a"), llm, evaluator, progress=False)
    first = llm.calls[0]
    assert "a solved task similar to this one" in user_text(first)
    assert TASK.expert_source() not in user_text(first)  # never the task's own expert, nor its family's
    assert "Triton notes" in first.messages[0]["content"]
    llm = ScriptedLLM(lambda task, k, i: fenced(EXPERT))
    run_agent(config(tmp_path / "b", one_shot="none", knowledge=False), llm, evaluator, progress=False)
    assert "similar" not in user_text(llm.calls[0]) and "Triton notes" not in llm.calls[0].messages[0]["content"]


def test_unparsable_and_failed_replies_never_stop_the_loop(tmp_path, evaluator):
    replies = ["\x00\xff garbage \ud800", "", Reply(None, error="HTTP 400: prompt too long"), "{" * 5000,
               fenced(EXPERT)]
    llm = ScriptedLLM(lambda task, k, i: replies[i])
    summary = run_agent(config(tmp_path, iterations=5), llm, evaluator, progress=False)
    assert summary["solved"] == 1 and summary["tasks_detail"]["vector_add"]["solved_at"] == [4]
    assert summary["cost"]["failed_calls"] == 1 and summary["cost"]["unparsable_rate"] == pytest.approx(4 / 5)
    third = [c for c in llm.calls if c.role == "generate"][3]
    assert "the model call failed: HTTP 400" in user_text(third)


def test_optimizer_shows_passing_candidates_with_speedups(tmp_path):
    speeds = iter([1.5, 3.0, 2.0, 2.5])
    fake = FakeEvaluator(lambda task, code: Verdict(task.id, "passed", "ok", speedup=next(speeds), expert_speedup=0.9))
    llm = ScriptedLLM(lambda task, k, i: fenced(EXPERT + f"# version {i}\n"))
    summary = run_agent(config(tmp_path, iterations=4, ancestors=2), llm, fake, progress=False)
    generations = [user_text(c) for c in llm.calls if c.role == "generate"]
    assert len(generations) == 4  # on a GPU a solved trajectory keeps optimizing
    assert "1.50x the PyTorch reference" in generations[1] and "faster" in generations[1]
    third = generations[3]
    assert third.index("3.00x") < third.index("2.00x") and "1.50x" not in third  # the best two, best first
    assert summary["speedup"]["mean_speedup_correct"] == 3.0 and summary["speedup"]["fast_2"] == 1.0


def test_a_failed_optimization_is_repaired_before_optimizing_again(tmp_path):
    verdicts = iter([Verdict("vector_add", "passed", "ok", speedup=1.2), Verdict("vector_add", "runtime_error", "boom"),
                     Verdict("vector_add", "passed", "ok", speedup=2.0)])
    llm = ScriptedLLM(lambda task, k, i: fenced(EXPERT + f"# version {i}\n"))
    run_agent(config(tmp_path, iterations=4), llm, FakeEvaluator(lambda task, code: next(verdicts, verdicts_done)),
              progress=False)
    generations = [user_text(c) for c in llm.calls if c.role == "generate"]
    assert "1.20x" in generations[1]
    assert "Your previous answer" in generations[2] and "runtime_error" in generations[2] and "1.20x" not in generations[2]
    assert "2.00x" in generations[3] and "1.20x" in generations[3]


verdicts_done = Verdict("vector_add", "passed", "ok", speedup=1.0)


def test_resume_replays_the_log_and_asks_only_for_the_rest(tmp_path, evaluator):
    script = lambda task, k, i: BROKEN_THEN_FIXED[min(i, 3)]  # noqa: E731
    with pytest.raises(EndpointError):
        run_agent(config(tmp_path), ScriptedLLM(script, fail_at=2), evaluator, progress=False)
    logged = (tmp_path / "run" / "calls.jsonl").read_text().splitlines()
    assert len(logged) == 4  # iterations 0 and 1, generate and reflect
    resumed = ScriptedLLM(script)
    summary = run_agent(config(tmp_path), resumed, evaluator, progress=False)
    assert sorted({int(c.key.split("/i")[1].split("/")[0]) for c in resumed.calls}) == [2, 3]  # only what was missing
    fresh = run_agent(config(tmp_path / "fresh"), ScriptedLLM(script), evaluator, progress=False)
    for key in ("solved", "pass@1", "by_iteration", "cost", "tasks_detail"):
        assert summary[key] == fresh[key]
    rows = lambda p: [(r["key"], r["code"], r["verdict"]["status"])  # noqa: E731
                      for r in map(json.loads, (p / "candidates.jsonl").read_text().splitlines())]
    assert rows(tmp_path / "run") == rows(tmp_path / "fresh" / "run")
    with pytest.raises(ValueError, match="other settings"):
        run_agent(config(tmp_path, temperature=0.2), ScriptedLLM(script), evaluator, progress=False)


class DiesAfter(ScriptedLLM):
    """Answers `live` calls, then the endpoint dies in the middle of a batch."""

    def __init__(self, script, live):
        super().__init__(script)
        self.live = live

    def complete(self, calls, on_reply=None):
        out = []
        for call in calls:
            if len(self.calls) >= self.live:
                raise EndpointError("the endpoint went away")
            out += super().complete([call], on_reply)
        return out


def test_replies_paid_for_before_an_endpoint_dies_mid_batch_are_kept(tmp_path, evaluator):
    """The log was written once the whole batch had returned: a kill or a dead endpoint after 6 of
    12 replies left none of them, and the rerun paid for all 6 again."""
    cfg = config(tmp_path, parallel=4, iterations=2)
    with pytest.raises(EndpointError):
        run_agent(cfg, DiesAfter(lambda task, k, i: fenced(WRONG), live=6), evaluator, progress=False)
    logged = (tmp_path / "run" / "calls.jsonl").read_text().splitlines()
    assert len(logged) == 6
    again = ScriptedLLM(lambda task, k, i: fenced(WRONG))
    run_agent(cfg, again, evaluator, progress=False)
    assert not {c.key for c in again.calls} & {json.loads(line)["key"] for line in logged}  # none asked twice


class SandboxDown:
    """An evaluator whose sandbox cannot start (a full disk): not the candidate's doing."""

    device = "cpu"

    def evaluate_many(self, pairs):
        return [Verdict(task.id, "sandbox_error", "No space left on device") for task, _ in pairs]


def test_a_sandbox_failure_stops_the_run_and_the_candidate_is_judged_on_resume(tmp_path, evaluator):
    """It was logged as the candidate's verdict, fed back as its failure and replayed on resume:
    a right kernel stayed failed after the sandbox was fixed."""
    from reasonrl.agents.geak.log import SandboxFailure

    llm = lambda: ScriptedLLM(lambda task, k, i: fenced(EXPERT))  # noqa: E731
    with pytest.raises(SandboxFailure, match="No space left"):
        run_agent(config(tmp_path), llm(), SandboxDown(), progress=False)
    assert not (tmp_path / "run" / "candidates.jsonl").exists() or not (tmp_path / "run" / "candidates.jsonl").read_text()
    assert run_agent(config(tmp_path), llm(), evaluator, progress=False)["solved"] == 1


def test_the_summary_counts_only_the_iterations_asked_for(tmp_path, evaluator):
    llm = ScriptedLLM(lambda task, k, i: fenced(WRONG))
    four = run_agent(config(tmp_path, iterations=4), llm, evaluator, progress=False)
    two = run_agent(config(tmp_path, iterations=2), ScriptedLLM(lambda task, k, i: fenced(WRONG)), evaluator, progress=False)
    assert two["cost"]["calls"] < four["cost"]["calls"]


FORGER = """import torch, os

def vector_add(x, y):
    torch.save({'stage': 'import', 'error': 'boom', 'layers': torch.ones(2)}, '.result.pt')
    os._exit(0)
"""


def test_a_forged_result_file_is_a_crash_and_the_run_goes_on(tmp_path, evaluator):
    """Its tensor `layers` reached the verdict: logging it raised "Object of type Tensor is not JSON
    serializable", and every rerun died again on the replayed reply."""
    for _ in range(2):  # the rerun replays the log
        llm = ScriptedLLM(lambda task, k, i: fenced(FORGER))
        summary = run_agent(config(tmp_path, iterations=2, reflect=False), llm, evaluator, progress=False)
    assert summary["tasks_detail"]["vector_add"]["last_status"] == ["crashed"]


def test_a_task_whose_reference_fails_is_skipped_with_the_reason(tmp_path):
    """Its verdict was `sandbox_error`, which stops the run ("rerun to resume"), and the rerun stopped again."""
    from reasonrl.agents.geak.log import SandboxFailure  # noqa: F401 - what used to be raised

    class BrokenReference(FakeEvaluator):
        def evaluate_many(self, pairs):
            return [Verdict(task.id, "task_error", "this task's reference failed: RuntimeError: Found no NVIDIA driver")
                    if task.id == "flip" else Verdict(task.id, "passed", "ok", speedup=1.0) for task, _ in pairs]

    llm = ScriptedLLM(lambda task, k, i: fenced(EXPERT))
    summary = run_agent(config(tmp_path, tasks="vector_add,flip", iterations=3), llm, BrokenReference(None),
                        progress=False)
    assert "Found no NVIDIA driver" in summary["skipped"]["flip"] and list(summary["skipped"]) == ["flip"]
    flip_calls = [c for c in llm.calls if c.key.startswith("flip/")]
    assert [c.role for c in flip_calls] == ["generate"]  # skipped after its first verdict: no reflection, no more tries
    assert summary["tasks_detail"]["vector_add"]["solved_at"] == [0]
    assert "Found no NVIDIA driver" in (tmp_path / "run" / "summary.md").read_text()


def test_a_reference_that_timed_out_once_neither_closes_the_trajectory_nor_is_logged(tmp_path):
    """A timeout of the task's reference was a `task_error`: the trajectory closed for the rest of the
    run (`skipped`), though the next evaluation would have judged its candidates."""
    from reasonrl.agents.geak.memory import Attempt, Trajectory

    class SlowReferenceOnce(FakeEvaluator):
        def evaluate_many(self, pairs):
            first = not self.seen
            self.seen += pairs
            return [Verdict(task.id, "not_judged", "not judged this time: the reference passed the wall-clock limit")
                    if first else Verdict(task.id, "passed", "ok", speedup=1.0) for task, _ in pairs]

    llm = ScriptedLLM(lambda task, k, i: fenced(EXPERT))
    summary = run_agent(config(tmp_path, iterations=2), llm, SlowReferenceOnce(None), progress=False)
    assert not summary["skipped"] and summary["tasks_detail"]["vector_add"]["solved_at"] == [1]
    assert [c.role for c in llm.calls] == ["generate", "generate", "reflect"]  # no reflection on what was not judged
    rows = [json.loads(line) for line in (tmp_path / "run" / "candidates.jsonl").read_text().splitlines()]
    assert [r["verdict"]["status"] for r in rows] == ["passed"]  # judged again on resume
    trajectory, wrong = Trajectory(TASK, 0), Attempt(0, WRONG, "wrong_output", "case 1: wrong", False)
    trajectory.record(wrong)
    trajectory.record(Attempt(1, EXPERT, "not_judged", "not judged this time", False))
    assert not trajectory.skipped and trajectory.last is wrong and trajectory.streak[1] == 1  # the same line repaired


def test_evaluator_options_in_the_task_spec_are_refused_by_name(tmp_path):
    """`kernels:?ids=vector_add&timeout=2&workers=1` ran with the default evaluator: the options were
    silently dropped (a 0.5 s/call candidate passed after 6 s)."""
    fake = FakeEvaluator(lambda task, code: Verdict(task.id, "passed", "ok"))
    llm = ScriptedLLM(lambda task, k, i: "no code")
    with pytest.raises(ValueError, match=r"option\(s\) timeout, workers do nothing for the agent.*--timeout"):
        run_agent(config(tmp_path, tasks="kernels:?ids=vector_add&timeout=2&workers=1"), llm, fake, progress=False)
    with pytest.raises(ValueError, match="holdout"):
        run_agent(config(tmp_path / "b", tasks="kernels:?ids=vector_add&holdout=0"), llm, fake, progress=False)
    assert not fake.seen


def test_a_solved_kernel_of_the_same_family_is_a_one_shot_example(tmp_path):
    """A published suite puts every task in one family, and the family was excluded from retrieval: no
    solved kernel was ever shown. Only experts of the family are kept out (answer keys); the run's own
    solutions of other tasks are fair examples."""
    from reasonrl.envs.kernels.published import ScriptTask

    def task(name):
        return ScriptTask(f"tritonbench/{name}", "tritonbench", f"Write {name}, an elementwise add of two vectors.",
                          f"def {name}(x, y)", "", "", (1e-2, 1e-1), entry=name)

    first, second = task("add_one"), task("add_two")
    fake = FakeEvaluator(lambda t, code: Verdict(t.id, "passed" if t is first else "wrong_output", "ok", speedup=1.0))
    llm = ScriptedLLM(lambda t, k, i: fenced(f"def {t.split('/')[1]}(x, y):\n    return x + y  # mine {i}\n"))
    run_agent(config(tmp_path, one_shot="solved", iterations=2, reflect=False), llm, fake, tasks=[first, second],
              progress=False)
    second_calls = [user_text(c) for c in llm.calls if c.key.startswith("tritonbench/add_two/")]
    assert "similar to this one" not in second_calls[0]  # nothing solved yet
    assert "a solved task similar to this one" in second_calls[1] and "def add_one(x, y)" in second_calls[1]
