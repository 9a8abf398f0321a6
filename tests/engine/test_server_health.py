"""Faults inside the engine, seen over HTTP: one request's fault is its own 500; an engine that
cannot serve answers 503 on /health; the Prometheus metrics count what happened."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serve_helpers import Server, demo_engine, no_leaks

from reasonrl.engine.server import ServeConfig

GREEDY = {"prompt": [5, 40, 41, 7], "max_tokens": 8, "temperature": 0, "ignore_eos": True, "return_token_ids": True}


@pytest.fixture(scope="module")
def srv():
    server = Server(demo_engine(), ServeConfig(served_model_name="demo", stall_seconds=0.5))
    yield server
    server.stop()


@pytest.fixture
def client(srv):
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        yield c


def poison(engine, monkeypatch, rid="poison"):
    sampling_batch = engine.runner.sampling_batch

    def faulty(seqs):
        if any(s.request_id.startswith(rid) for s in seqs):
            raise RuntimeError("injected fault")
        return sampling_batch(seqs)

    monkeypatch.setattr(engine.runner, "sampling_batch", faulty)


def test_one_requests_fault_is_its_own_500(srv, client, monkeypatch):
    solo = client.post("/v1/completions", json=GREEDY).json()["choices"][0]["token_ids"]
    poison(srv.engine, monkeypatch)
    results = {}

    def post(name, body):
        results[name] = httpx.post(srv.url + "/v1/completions", json=body, timeout=60)

    threads = [threading.Thread(target=post, args=(f"good{i}", GREEDY)) for i in range(6)]
    threads.append(threading.Thread(target=post, args=("bad", {**GREEDY, "request_id": "poison", "prompt": [[1], [2]]})))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bad = results.pop("bad")
    assert bad.status_code == 500 and "request 'poison-" in bad.json()["error"]["message"]
    assert all(r.json()["choices"][0]["token_ids"] == solo for r in results.values())
    with client.stream("POST", "/v1/completions", json={**GREEDY, "stream": True, "request_id": "poison-s"}) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and "'poison-s'" in json.loads(events[-2])["error"]["message"]
    assert client.get("/health").json() == {"status": "ok"}
    assert no_leaks(srv.engine)


def test_an_engine_failing_every_step_is_unhealthy_until_it_serves_again(srv, client, monkeypatch):
    monkeypatch.setattr(srv.engine.runner, "run", lambda *a: (_ for _ in ()).throw(RuntimeError("device lost")))
    for _ in range(3):
        r = client.post("/v1/completions", json=GREEDY)
        assert r.status_code == 500 and "device lost" in r.json()["error"]["message"]
    r = client.get("/health")
    assert r.status_code == 503 and "failed" in r.json()["error"]["message"]
    monkeypatch.undo()
    assert client.post("/v1/completions", json=GREEDY).status_code == 200
    assert client.get("/health").status_code == 200
    assert no_leaks(srv.engine)


def test_an_error_outside_any_request_fails_those_in_flight_and_serving_goes_on(srv, client, monkeypatch):
    schedule, calls = srv.engine.scheduler.schedule, []

    def breaks_once():
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("scheduler bug")
        return schedule()

    monkeypatch.setattr(srv.engine.scheduler, "schedule", breaks_once)
    r = client.post("/v1/completions", json={**GREEDY, "request_id": "victim"})
    assert r.status_code == 500 and "'victim'" in r.json()["error"]["message"]
    assert client.post("/v1/completions", json=GREEDY).status_code == 200
    assert no_leaks(srv.engine)


def test_a_stalled_step_makes_health_503(srv, client, monkeypatch):
    step = srv.engine.step
    monkeypatch.setattr(srv.engine, "step", lambda: (time.sleep(1.5), step())[1])
    thread = threading.Thread(target=lambda: httpx.post(srv.url + "/v1/completions", json={**GREEDY, "max_tokens": 2},
                                                        timeout=60))
    thread.start()
    time.sleep(1.0)
    r = client.get("/health")
    assert r.status_code == 503 and "stuck" in r.json()["error"]["message"]
    thread.join()
    monkeypatch.undo()
    time.sleep(0.2)
    assert client.get("/health").status_code == 200


def test_metrics(srv, client):
    for stream in (False, True):
        client.post("/v1/completions", json={**GREEDY, "stream": stream})
    client.post("/v1/completions", json={"prompt": "x", "n": 0})
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}

    def value(name, **labels):
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("reasonrl_http_requests_total", route="/v1/completions", status="200") >= 2
    assert value("reasonrl_http_requests_total", route="/v1/completions", status="400") >= 1
    assert value("reasonrl_time_to_first_token_seconds_count", model_name="demo") >= 2
    assert value("reasonrl_time_per_output_token_seconds_count", model_name="demo") >= 2
    assert value("reasonrl_request_latency_seconds_count", model_name="demo") >= 2
    assert value("reasonrl_request_finished_total", model_name="demo", finish_reason="length") >= 2
    assert value("reasonrl_kv_blocks_total", model_name="demo") == srv.engine.stats()["kv_blocks_total"]
    assert value("reasonrl_generation_tokens_total", model_name="demo") == srv.engine.num_generated_tokens
    for name in ("reasonrl_waiting_sequences", "reasonrl_running_sequences", "reasonrl_kv_usage_ratio",
                 "reasonrl_preemptions_total", "reasonrl_generation_tokens_per_second", "reasonrl_healthy"):
        assert (name, (("model_name", "demo"),)) in samples, name


def test_a_dead_engine_thread_answers_503_everywhere():
    server = Server(demo_engine())
    try:
        class Dead(BaseException):
            pass

        def die(block):
            raise Dead()

        server.core._apply_commands = die
        server.core.commands.put(None)  # wake the thread
        server.core.thread.join(timeout=5)
        assert client_status(server, "GET", "/health") == 503
        assert client_status(server, "POST", "/v1/completions", GREEDY) == 503
        assert client_status(server, "GET", "/v1/stats") == 503
    finally:
        server.stop()


def client_status(server, method, path, body=None) -> int:
    r = httpx.request(method, server.url + path, json=body, timeout=30)
    assert r.json()["error"]["code"] == r.status_code
    return r.status_code


def test_speculation_metrics_export_the_adaptive_policy():
    """With a draft, /metrics reports acceptance, steps without trees and the tree size the
    adaptive policy runs per batch-size bucket (read from the engine's snapshot)."""
    from reasonrl.engine.server.metrics import Metrics

    class Engine:
        snapshot = {"spec_rounds": 10, "spec_draft_tokens": 80, "spec_emitted_tokens": 40, "spec_accepted_length": 4.0,
                    "spec_steps_without_trees": 7, "spec_tree_tokens_at_batch_1": 16, "spec_tree_tokens_at_batch_32": 0}

        def health(self):
            return True, ""

        def tokens_per_second(self):
            return 0.0

    metrics = Metrics("demo")
    metrics.collect_from(Engine())
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(metrics.render().decode()) for s in f.samples}
    assert samples[("reasonrl_spec_steps_without_trees_total", (("model_name", "demo"),))] == 7
    assert samples[("reasonrl_spec_accepted_length", (("model_name", "demo"),))] == 4.0
    assert samples[("reasonrl_spec_tree_tokens", (("batch_bucket", "1"), ("model_name", "demo")))] == 16
    assert samples[("reasonrl_spec_tree_tokens", (("batch_bucket", "32"), ("model_name", "demo")))] == 0
