"""The adversarial suite: every cheat and escape in adversaries.py gets its verdict, the same in
every rerun, with and without namespaces; nothing escapes (no file outside, no connection)."""

import socket
import threading

import pytest
from adversaries import ADVERSARIES

import reasonrl.envs.kernels.suite.elementwise as family
from reasonrl.envs.kernels.evaluate import EvaluatorConfig, KernelEvaluator, SandboxLimits
from reasonrl.envs.kernels.suite import get_task


class Listener:
    """A TCP server on 127.0.0.1 that records every connection it gets."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn.recv(100))


@pytest.fixture(scope="module")
def listener():
    server = Listener()
    yield server
    server.sock.close()


def run_suite(evaluator, listener, outside):
    task = get_task("vector_add")
    sources = {name: source.format(expert_path=family.__file__, outside_path=str(outside), port=listener.port,
                                   cases=len(task.cases()))
               for name, (_, source) in ADVERSARIES.items()}
    verdicts = evaluator.evaluate_many([(task, s) for s in sources.values()] + [(task, task.expert_source())])
    return dict(zip([*sources, "expert"], verdicts))


@pytest.mark.slow
@pytest.mark.parametrize("namespaces,reruns", [(True, 3), (False, 1)])
def test_every_adversary_is_caught(namespaces, reruns, tmp_path, listener):
    outside = tmp_path / "escaped"
    limits = SandboxLimits(timeout=6.0, cpu_seconds=10, memory=2 << 30)
    with KernelEvaluator(EvaluatorConfig(workers=2, namespaces=namespaces), limits) as evaluator:
        runs = [run_suite(evaluator, listener, outside) for _ in range(reruns)]
    first = runs[0]
    for name, (expected, _) in ADVERSARIES.items():
        verdict = first[name]
        assert verdict.status == expected, (name, verdict.message, verdict.stderr[-800:])
        assert not verdict.exec_ok
    assert first["expert"].status == "passed", first["expert"].message
    assert ("user-namespace" in first["expert"].layers) == namespaces or not namespaces
    assert "seccomp" in first["expert"].layers
    for again in runs[1:]:  # verdicts identical on reruns, messages included
        assert {n: (v.status, v.message, v.cases_passed) for n, v in again.items()} == \
               {n: (v.status, v.message, v.cases_passed) for n, v in first.items()}
    assert not outside.exists()
    assert listener.connections == []


def test_violations_are_named(tmp_path, listener):
    task = get_task("vector_add")
    _, source = ADVERSARIES["read_expert"]
    with KernelEvaluator(EvaluatorConfig(workers=1), SandboxLimits(timeout=20.0)) as evaluator:
        verdict = evaluator.evaluate(task, source.format(expert_path=family.__file__))
    assert verdict.status == "forbidden"
    assert any("elementwise.py" in v and "hidden" in v for v in verdict.violations)
    assert "elementwise.py" in verdict.message
