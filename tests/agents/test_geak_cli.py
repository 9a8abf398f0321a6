"""`reasonrl kernel-agent` and `reasonrl report` on an agent run (with the scripted LLM)."""

import pytest
from geak_doubles import ScriptedLLM, fenced

from reasonrl.agents.geak import AgentConfig, run_agent
from reasonrl.cli import main
from reasonrl.envs.kernels.suite import get_task


def test_kernel_agent_flags_and_a_dead_endpoint(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["kernel-agent", "--help"])
    assert "--max-repeated-errors" in capsys.readouterr().out
    code = main(["kernel-agent", "--endpoint", "http://127.0.0.1:9/v1", "--model", "m", "--tasks", "flip",
                 "--out", str(tmp_path / "run"), "--retries", "0"])
    assert code == 1 and "cannot reach the endpoint" in capsys.readouterr().err
    assert main(["kernel-agent", "--endpoint", "http://x", "--model", "m", "--iterations", "0"]) == 2


def test_report_plots_an_agent_run(tmp_path):
    expert = get_task("flip").expert_source()
    llm = ScriptedLLM(lambda task, k, i: fenced(expert) if k == 0 and i == 1 else "no idea")
    from reasonrl.envs.kernels.evaluate import EvaluatorConfig, KernelEvaluator

    with KernelEvaluator(EvaluatorConfig(workers=1)) as evaluator:
        run_agent(AgentConfig(endpoint="http://unused", model="m", out=str(tmp_path / "run"), tasks="flip",
                              iterations=2, parallel=2), llm, evaluator, progress=False)
    assert main(["report", str(tmp_path / "run")]) == 0
    report = (tmp_path / "run" / "report.md").read_text()
    assert "pass@k" in report and "accuracy_by_iteration.png" in report
    assert (tmp_path / "run" / "accuracy_by_trajectories.png").stat().st_size > 1000
