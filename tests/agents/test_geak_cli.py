"""`reasonrl kernel-agent` and `reasonrl report` on an agent run (with the scripted LLM)."""

import json
import sys
from pathlib import Path

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


def test_kernel_agent_over_http_repairs_retries_and_resumes(tmp_path, capsys):
    """The command itself against an OpenAI-compatible endpoint that fails every request's first
    try (503) and answers the first generation with a wrong kernel, the repair with the expert."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "eval"))
    from eval_fake_server import FakeServer

    expert = get_task("vector_add").expert_source()

    def reply(body, attempt):
        if attempt == 0:
            return 503, "busy, try again"
        user = body["messages"][-1]["content"]
        if "Candidate:" in user:  # the reflector
            return "The kernel subtracts where it must add; use x + y."
        return fenced(expert if "Your previous answer" in user else expert.replace("x + y", "x - y"))

    server = FakeServer(reply)
    argv = ["kernel-agent", "--endpoint", server.url, "--model", "fake", "--tasks", "vector_add", "--iterations", "3",
            "--out", str(tmp_path / "run"), "--workers", "1", "--one-shot", "none"]
    try:
        assert main(argv) == 0
        served = len(server.served)
        assert main(argv) == 0  # the rerun resumes from the log: nothing left to ask
        assert len(server.served) == served
    finally:
        server.stop()
    assert len(server.requests) == 2 * served  # every request was retried once after its 503
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["solved"] == 1 and summary["tasks_detail"]["vector_add"]["solved_at"] == [1]
    statuses = [json.loads(r)["verdict"]["status"] for r in (tmp_path / "run" / "candidates.jsonl").read_text().splitlines()]
    assert statuses == ["wrong_output", "passed"]
    assert "pass@1" in capsys.readouterr().out
