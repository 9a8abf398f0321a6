"""The flaws users found in GEAK's evaluator (geak.md §2.3, §6), each checked end to end here:

- tolerances dropped inside nested outputs (its list/tuple branch fell back to allclose's
  defaults, its namedtuple branch was dead code): a candidate whose nested output is off by
  less than the task's tolerance passes through the sandboxed evaluator, in a tuple, a list or a
  namedtuple; off by more, it fails with the place named;
- speedups of 10x or more silently discarded: here they are flagged and kept, in the verdict,
  the environment's metrics, the agent's summary and the reward; a forged clock gives no
  speedup at all rather than a NaN;
- generated code run with `shell=True`: nothing in the package starts a shell, and a candidate
  that asks for one is refused by the sandbox.
"""

import ast
import math
import sys
from pathlib import Path

import pytest
import torch

from reasonrl.envs.kernels import KernelEnvironment
from reasonrl.envs.kernels.evaluate import EvaluatorConfig, KernelEvaluator, SandboxLimits, Verdict
from reasonrl.envs.kernels.evaluate.speedup import apply_timing
from reasonrl.envs.kernels.suite import get_task

sys.path.insert(0, str(Path(__file__).parents[1] / "agents"))
from geak_doubles import FakeEvaluator, ScriptedLLM, fenced  # noqa: E402

PACKAGE = Path(__file__).parents[2] / "reasonrl"
MEAN_VAR = get_task("row_mean_var")
# The expert's (mean, var), then `var` moved by `share` of the task's tolerance (fp32: 1e-4 + 1e-4|v|,
# fp16 inputs: 1e-3 + 1e-3|v|) and returned in the container `wrap` builds.
NUDGED = '''
import collections

_expert = row_mean_var
MeanVar = collections.namedtuple("MeanVar", "mean var")

def row_mean_var(x):
    mean, var = _expert(x)
    tol = 1e-4 if x.dtype == torch.float32 else 1e-3
    var = var + {share} * tol * (1 + var.abs())
    return {wrap}
'''


def nudged(share: float, wrap: str) -> str:
    return MEAN_VAR.expert_source() + NUDGED.format(share=share, wrap=wrap)


@pytest.fixture(scope="module")
def evaluator():
    with KernelEvaluator(EvaluatorConfig(workers=2), SandboxLimits(timeout=60.0)) as ev:
        yield ev


def test_the_nudge_is_inside_the_tolerance_but_outside_allclose_defaults():
    var = torch.tensor([9.0])
    assert not torch.allclose(var, var + 0.4 * 1e-4 * (1 + var))  # what GEAK's list branch compared with


@pytest.mark.slow
def test_tolerance_holds_inside_tuples_lists_and_namedtuples(evaluator):
    wraps = ["(mean, var)", "[mean, var]", "MeanVar(mean, var)"]
    inside = evaluator.evaluate_many([(MEAN_VAR, nudged(0.4, w)) for w in wraps])
    assert [v.status for v in inside] == ["passed"] * 3, [v.message for v in inside]
    outside = evaluator.evaluate_many([(MEAN_VAR, nudged(3.0, w)) for w in wraps])
    for verdict in outside:
        assert verdict.status == "wrong_output"
        assert "output[1]" in verdict.message and "atol=0.0001" in verdict.message, verdict.message


def timing_answer(reference_ms: float, candidate_ms: float) -> dict:
    shape = lambda ms: [[ms] * 6]  # noqa: E731 - one timing shape, six samples
    return {"samples": {"reference": shape(reference_ms), "expert": shape(reference_ms / 2),
                        "candidate": shape(candidate_ms)}, "mismatch": None, "error": None}


def test_a_large_speedup_is_flagged_and_kept_everywhere():
    verdict = apply_timing(Verdict("vector_add", "passed", "ok"), timing_answer(25.0, 1.0))
    assert verdict.speedup == pytest.approx(25.0) and verdict.flags == ["speedup>=10x"] and verdict.exec_ok
    speeds = {"vector_add": verdict, "softmax": Verdict("softmax", "passed", "ok", speedup=1.5)}
    fake = FakeEvaluator(lambda task, code: speeds[task.id])
    env = KernelEnvironment([get_task("vector_add"), get_task("softmax")], evaluator=fake)
    prompts = env.prompts(split="all")
    responses = [fenced(get_task(p.id).expert_source()) for p in prompts]
    rewards = env.rewards(prompts, responses)
    assert rewards == [pytest.approx(1.5), pytest.approx(1 + 0.5 * math.log2(1.5) / 2)]  # 25x: the full bonus
    speed = env.metrics(prompts, responses, rewards)["speedup"]
    assert speed["flagged"] == ["vector_add"] and speed["mean_speedup_correct"] == pytest.approx((25.0 + 1.5) / 2)


def test_a_large_speedup_reaches_the_agent_summary(tmp_path):
    from reasonrl.agents.geak import AgentConfig, run_agent
    from reasonrl.agents.geak.metrics import markdown

    task = get_task("vector_add")
    fake = FakeEvaluator(lambda t, code: Verdict(t.id, "passed", "ok", speedup=40.0, expert_speedup=20.0))
    config = AgentConfig(endpoint="http://unused", model="scripted", out=str(tmp_path / "run"), tasks="vector_add",
                         iterations=1)
    summary = run_agent(config, ScriptedLLM(lambda *_: fenced(task.expert_source())), fake, progress=False)
    assert summary["speedup"]["flagged"] == ["vector_add"] and summary["speedup"]["mean_speedup_correct"] == 40.0
    assert "| flagged | vector_add |" in markdown(summary)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 0.0, -1.0])
def test_a_forged_clock_gives_no_speedup_and_no_nan(bad):
    answer = timing_answer(2.0, 1.0)
    answer["samples"]["candidate"][0][3] = bad
    verdict = apply_timing(Verdict("vector_add", "passed", "ok"), answer)
    assert verdict.speedup is None and verdict.flags[0].startswith("timing failed") and verdict.exec_ok
    assert KernelEnvironment([get_task("vector_add")]).reward_of(verdict) == 1.0


def shell_calls(tree: ast.AST) -> list[str]:
    """Calls that start a shell: any `shell=` other than a literal False, os.system, os.popen."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        if name in ("os.system", "os.popen", "system", "popen", "commands.getoutput"):
            found.append(name)
        for kw in node.keywords:
            if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                found.append(f"{name}(shell=...)")
    return found


def test_nothing_in_the_package_starts_a_shell():
    assert shell_calls(ast.parse("import subprocess\nsubprocess.run('ls', shell=True)\nos.system('ls')")) == \
        ["subprocess.run(shell=...)", "os.system"]  # the scan finds what it looks for
    offenders = {str(p.relative_to(PACKAGE)): calls for p in sorted(PACKAGE.rglob("*.py"))
                 if (calls := shell_calls(ast.parse(p.read_text())))}
    assert offenders == {}
