"""The dead-endpoint trip wire when every request has already failed by the time it is read."""

import time

import pytest
from eval_fake_server import FakeServer

import reasonrl.eval.client as client_module
from reasonrl.envs.base import Prompt
from reasonrl.eval.client import ClientConfig, EndpointError, OpenAIClient
from reasonrl.eval.jobs import Job


def test_trip_after_the_last_job_finished_is_an_endpoint_error(monkeypatch):
    drain = client_module._drain

    def slow_reader(results, wait):  # a busy caller: every job is done (and the loop closed) before it reads
        time.sleep(1.0)
        return drain(results, wait)

    monkeypatch.setattr(client_module, "_drain", slow_reader)
    server = FakeServer(lambda body, attempt: (400, "the prompt does not fit the context"))
    try:
        client = OpenAIClient(ClientConfig(server.url, "fake", concurrency=8), 16, 0.0, 1.0)
        jobs = [Job(Prompt(f"p{i}", [{"role": "user", "content": f"q{i}"}]), 0, i) for i in range(8)]
        with pytest.raises(EndpointError, match="failed the last 8 requests in a row.*does not fit"):
            for _ in client.generate(jobs):
                pass
    finally:
        server.stop()
