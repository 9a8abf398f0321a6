"""The dead-endpoint trip wire: when it trips, and that refused requests do not feed it."""

import time

import pytest
from eval_fake_server import FakeServer, problem_text

import reasonrl.eval.client as client_module
from reasonrl.envs.base import Prompt
from reasonrl.eval.client import ClientConfig, EndpointError, OpenAIClient, RefusedAll
from reasonrl.eval.jobs import Completion, Failure, Job


def results(server, count):
    """What the client gets for `count` requests q0, q1, ... (trip count 8, no retries)."""
    client = OpenAIClient(ClientConfig(server.url, "fake", concurrency=8, retries=0), 16, 0.0, 1.0)
    jobs = [Job(Prompt(f"p{i}", [{"role": "user", "content": f"q{i}"}]), 0, i) for i in range(count)]
    return [out for batch in client.generate(jobs) for _, out in batch]


def test_trip_after_the_last_job_finished_is_an_endpoint_error(monkeypatch):
    drain = client_module._drain

    def slow_reader(results, wait):  # a busy caller: every job is done (and the loop closed) before it reads
        time.sleep(1.0)
        return drain(results, wait)

    monkeypatch.setattr(client_module, "_drain", slow_reader)
    server = FakeServer(lambda body, attempt: (503, "no healthy upstream"))
    try:
        with pytest.raises(EndpointError, match="failed the last 8 requests in a row.*no healthy upstream"):
            results(server, 8)
    finally:
        server.stop()


def test_refusals_in_a_row_from_a_server_that_answers_others_do_not_trip():
    """A run of prompts too long for the context (HTTP 400) counted as a dead endpoint: the run
    stopped with EndpointError, and a rerun asked for the same prompts and stopped again."""
    too_long = {f"q{i}" for i in range(2, 40)}  # 38 refusals in a row, far past the trip count
    server = FakeServer(lambda body, attempt: (400, "prompt too long") if problem_text(body) in too_long else "ok")
    try:
        outs = results(server, 48)
    finally:
        server.stop()
    assert sum(isinstance(out, Completion) for out in outs) == 10
    assert sum(isinstance(out, Failure) and out.rejected for out in outs) == 38


def test_a_server_that_refuses_every_request_is_one_error():
    """docs/sand.md: a context too short for the prompt plus max_tokens refuses every request, and
    that is one error with the server's message (not every problem dropped as too long)."""
    server = FakeServer(lambda body, attempt: (400, "maximum context length is 512 tokens"))
    try:
        with pytest.raises(RefusedAll, match="refused all 12 requests and answered none.*context length is 512"):
            results(server, 12)
        assert len(server.requests) == 12
        few = results(server, 5)  # fewer than the trip count: each refusal is the request's own
    finally:
        server.stop()
    assert all(isinstance(out, Failure) and out.rejected for out in few) and len(few) == 5


@pytest.mark.parametrize("status", [401, 402, 403, 404])
def test_an_account_or_endpoint_error_mid_run_trips_and_is_no_refusal(status):
    """A revoked key, credits run out or a model unloaded behind a proxy (401-404) counted as the
    requests' own refusals: the breaker never tripped and SAND dropped those problems for good."""
    answered = {"q0", "q1", "q2", "q3"}
    server = FakeServer(lambda body, attempt: "ok" if problem_text(body) in answered else (status, "no credits left"))
    try:
        with pytest.raises(EndpointError, match="failed the last 8 requests in a row") as error:
            results(server, 48)  # 44 failures around 4 answers, in any completion order: 9 or more in a row
    finally:
        server.stop()
    assert not isinstance(error.value, RefusedAll)
