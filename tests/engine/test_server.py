"""The OpenAI-compatible server, over a real socket on 127.0.0.1."""

import json
import socket
import threading
import time

import httpx
import pytest

from reasonrl.engine import LLMEngine
from reasonrl.engine.config import EngineConfig
from reasonrl.engine.server import ServeConfig
from reasonrl.models import Tokenizer, load_model

from serve_helpers import Server, wait_idle


@pytest.fixture(scope="module")
def server(hf_checkpoint, tokenizer):
    path, _ = hf_checkpoint("qwen2", tokenizer=tokenizer)
    engine = LLMEngine(load_model(path, "cpu"), Tokenizer.from_dir(path),
                       EngineConfig(kv_cache_memory=1 << 22, block_size=8, max_model_len=256))
    srv = Server(engine, ServeConfig(served_model_name="tiny"))
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def test_models_and_health(client):
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/v1/models").json()["data"][0]["id"] == "tiny"


def test_completion_with_logprobs_n_seed_stop(client):
    body = {"model": "tiny", "prompt": "the quick", "max_tokens": 12, "temperature": 0.8, "seed": 5, "n": 3,
            "logprobs": 2, "return_token_ids": True, "ignore_eos": True}
    r = client.post("/v1/completions", json=body).json()
    assert [c["index"] for c in r["choices"]] == [0, 1, 2]
    c0 = r["choices"][0]
    assert len(c0["token_ids"]) == 12 and len(c0["logprobs"]["token_logprobs"]) == 12
    assert all(len(t) <= 2 for t in c0["logprobs"]["top_logprobs"])
    assert r["usage"]["completion_tokens"] == 36
    again = client.post("/v1/completions", json=body).json()
    assert [c["token_ids"] for c in again["choices"]] == [c["token_ids"] for c in r["choices"]]  # seeded
    stop = c0["text"][2:4]
    cut = client.post("/v1/completions", json={**body, "n": 1, "stop": [stop]}).json()["choices"][0]
    assert cut["finish_reason"] == "stop" and cut["text"] == c0["text"][:c0["text"].index(stop)]


def test_token_prompt_and_batch_of_prompts(client):
    r = client.post("/v1/completions", json={"prompt": [[1, 2, 3], [4, 5]], "max_tokens": 3, "temperature": 0,
                                             "return_token_ids": True}).json()
    assert len(r["choices"]) == 2 and r["usage"]["prompt_tokens"] == 5


def test_chat_completion_and_streaming_agree(client):
    msgs = [{"role": "user", "content": "hello"}]
    body = {"messages": msgs, "max_tokens": 10, "temperature": 0, "ignore_eos": True, "logprobs": True, "top_logprobs": 1}
    full = client.post("/v1/chat/completions", json=body).json()["choices"][0]
    assert full["message"]["role"] == "assistant" and len(full["logprobs"]["content"]) == 10
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True,
                                                             "stream_options": {"include_usage": True}}) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert text == full["message"]["content"]
    assert chunks[-1]["usage"]["completion_tokens"] == 10


def test_streaming_completion_holds_back_stop_strings(client):
    free = client.post("/v1/completions", json={"prompt": "the quick", "max_tokens": 16, "temperature": 0,
                                                "ignore_eos": True}).json()["choices"][0]["text"]
    stop = free[5:8]
    with client.stream("POST", "/v1/completions", json={"prompt": "the quick", "max_tokens": 16, "temperature": 0,
                                                        "ignore_eos": True, "stop": stop, "stream": True}) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert "".join(c["choices"][0]["text"] for c in chunks) == free[:free.index(stop)]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("body,param", [
    ({"prompt": "x", "n": 0}, "n"),
    ({"prompt": "x", "n": 1000}, "n"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 100000}, "max_tokens"),
    ({"prompt": "x", "temperature": "hot"}, "temperature"),
    ({"prompt": "x", "n": "2"}, "n"),
    ({"prompt": "x", "stop": 5}, "stop"),
    ({"prompt": "x", "presence_penalty": 2.5}, "presence_penalty"),
    ({"prompt": []}, None),
    ({"prompt": "x", "resume": {"token_ids": [1, 2], "logprobs": [0.0]}}, "resume"),
    ({"max_tokens": 3}, "prompt"),
    ({"prompt": list(range(300))}, "prompt"),
    ({"prompt": list(range(250)), "max_tokens": 10}, "max_tokens"),
    ({"prompt": [1, 99999]}, None),
])


def test_bad_completion_requests_get_400_with_json_error(client, body, param):
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"]
    if param:
        assert param in (err["param"] or "") or param in err["message"]


def test_malformed_json_and_bad_chat(client):
    r = client.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]["message"]
    assert client.post("/v1/completions", content=b"[1,2]").status_code == 400
    assert client.post("/v1/chat/completions", json={"messages": []}).status_code == 400
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "wizard", "content": "x"}]})
    assert r.status_code == 400 and "role" in r.json()["error"]["message"]
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})
    assert r.status_code == 400 and "text only" in r.json()["error"]["message"]
    r = client.post("/v1/completions", json={"prompt": "x", "model": "other"})
    assert r.status_code == 404 and "not served" in r.json()["error"]["message"]


def test_abort_one_returns_partial_and_the_request_ends(client, server):
    body = {"prompt": [1, 2, 3], "max_tokens": 200, "temperature": 0, "ignore_eos": True, "request_id": "long-1",
            "return_token_ids": True}
    with httpx.Client(base_url=server.url, timeout=30) as other:
        result = {}
        t = threading.Thread(target=lambda: result.update(r=other.post("/v1/completions", json=body).json()))
        t.start()
        while not server.engine.requests or server.engine.requests["long-1"].seqs[0].num_computed < 5:
            time.sleep(0.01)
        aborted = client.post("/v1/abort", json={"request_id": "long-1"}).json()["aborted"]
        t.join(timeout=10)
    assert len(aborted) == 1 and aborted[0]["outputs"][0]["finish_reason"] == "abort"
    partial = aborted[0]["outputs"][0]["token_ids"]
    assert 0 < len(partial) < 200
    choice = result["r"]["choices"][0]
    assert choice["finish_reason"] == "abort" and choice["token_ids"] == partial
    assert wait_idle(server.engine)
    bm = server.engine.block_manager
    assert bm.num_free == len(bm.blocks)


def test_abort_by_a_multi_prompt_requests_own_id_stops_all_its_prompts(client, server):
    """Its prompts run as ID-0, ID-1: aborting ID found nothing, and both ran on to max_tokens."""
    body = {"prompt": [[1, 2, 3], [1, 2, 4]], "max_tokens": 200, "temperature": 0, "ignore_eos": True,
            "request_id": "job42"}
    with httpx.Client(base_url=server.url, timeout=30) as other:
        result = {}
        t = threading.Thread(target=lambda: result.update(r=other.post("/v1/completions", json=body).json()))
        t.start()
        while len(server.engine.requests) < 2 or min(r.seqs[0].num_computed for r in server.engine.requests.values()) < 5:
            time.sleep(0.01)
        assert client.post("/v1/completions", json=body).status_code == 400  # a retry with the running id: refused,
        aborted = client.post("/v1/abort", json={"request_id": "job42"}).json()["aborted"]  # and it took the entry
        t.join(timeout=10)
    assert sorted(a["request_id"] for a in aborted) == ["job42-0", "job42-1"]
    assert [c["finish_reason"] for c in result["r"]["choices"]] == ["abort", "abort"]
    assert wait_idle(server.engine)
    assert client.post("/v1/abort", json={"request_id": "job42"}).json() == {"aborted": []}


def test_resume_over_http_continues_exactly(client):
    body = {"prompt": [7, 8, 9], "max_tokens": 12, "temperature": 1.0, "seed": 3, "ignore_eos": True,
            "return_token_ids": True, "logprobs": 0}
    full = client.post("/v1/completions", json=body).json()["choices"][0]
    ids, lps = full["token_ids"], full["logprobs"]["token_logprobs"]
    resumed = client.post("/v1/completions", json={**body, "resume": {"token_ids": ids[:5], "logprobs": lps[:5]}})
    choice = resumed.json()["choices"][0]
    assert choice["token_ids"] == ids  # the whole response, resumed part included
    assert choice["logprobs"]["token_logprobs"][:5] == lps[:5]


def test_abort_all_and_bad_abort(client):
    assert client.post("/v1/abort", json={}).status_code == 400
    assert client.post("/v1/abort", json={"all": True}).json() == {"aborted": []}
    assert client.post("/v1/abort", json={"request_id": "unknown"}).json() == {"aborted": []}


@pytest.fixture
def slow_engine(server, monkeypatch):
    """Steps take 20 ms, so 200 tokens take 4 s: a request that is not aborted is caught."""
    step = server.engine.step

    def slow_step():
        time.sleep(0.02)
        return step()

    monkeypatch.setattr(server.engine, "step", slow_step)
    return server.engine


def _post_and_hang_up(port, body, engine, read_first=False):
    before = engine.stats()["generated_tokens"]
    with socket.create_connection(("127.0.0.1", port)) as sock:
        payload = json.dumps(body).encode()
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        sock.settimeout(120)  # a server that never answers fails the test, not the suite
        if read_first:  # until the first event: generation is under way (the headers alone may come first)
            received = b""
            while b"data:" not in received:
                chunk = sock.recv(4096)
                assert chunk, "the server closed the stream before its first event"
                received += chunk
        while not engine.requests:
            time.sleep(0.01)
    assert wait_idle(engine)
    return engine.stats()["generated_tokens"] - before


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_aborts_and_frees_blocks(server, slow_engine, stream):
    body = {"prompt": [1, 2, 3, 4], "max_tokens": 200, "temperature": 0, "ignore_eos": True, "stream": stream}
    generated = _post_and_hang_up(server.port, body, slow_engine, read_first=stream)
    assert 0 < generated < 100  # aborted early, not left decoding 200 tokens for nobody
    bm = slow_engine.block_manager
    assert bm.num_free == len(bm.blocks)


def _first_event(lines) -> dict:
    return json.loads(next(line[6:] for line in lines if line.startswith("data: {")))


def test_the_id_a_client_sees_aborts_its_whole_request(client, server, slow_engine):
    """A 3-prompt stream's chunks all said `cmpl-...-0` (its first prompt's engine id), so aborting the
    id the client saw stopped 1 prompt of 3; a Responses object's `resp_...` id aborted nothing."""
    body = {"prompt": [[1, 2, 3], [1, 2, 4], [1, 2, 5]], "max_tokens": 200, "temperature": 0, "ignore_eos": True,
            "stream": True}
    with httpx.Client(base_url=server.url, timeout=30) as other:
        with other.stream("POST", "/v1/completions", json=body) as r:
            lines = r.iter_lines()
            first = _first_event(lines)
            aborted = client.post("/v1/abort", json={"request_id": first["id"]}).json()["aborted"]
            chunks = [first, *(json.loads(line[6:]) for line in lines if line.startswith("data: {"))]
        assert len(aborted) == 3 and {c["id"] for c in chunks} == {first["id"]}
        ends = [c["choices"][0] for c in chunks if c["choices"][0]["finish_reason"]]
        assert sorted(c["index"] for c in ends) == [0, 1, 2] and {c["finish_reason"] for c in ends} == {"abort"}
        body = {"input": "x", "max_output_tokens": 200, "temperature": 0, "stream": True}
        with other.stream("POST", "/v1/responses", json=body) as r:
            lines = r.iter_lines()
            rid = _first_event(lines)["response"]["id"]
            aborted = client.post("/v1/abort", json={"request_id": rid}).json()["aborted"]
            last = [json.loads(line[6:]) for line in lines if line.startswith("data: {")][-1]
    assert rid.startswith("resp_") and len(aborted) == 1 and aborted[0]["request_id"] == rid.removeprefix("resp_")
    assert last["response"]["incomplete_details"] == {"reason": "aborted"}
    r = client.post("/v1/completions", json={"prompt": [[1], [2]], "max_tokens": 2, "request_id": "grp"}).json()
    assert r["id"] == "grp"  # not grp-0
    assert wait_idle(server.engine)


def test_a_request_id_in_flight_is_refused_naming_the_field(client, server, slow_engine):
    """A request's id, and each of its prompts' ids, are taken while it runs: a second request with
    one of them would make /v1/abort with it stop the wrong one (a refusal said param null)."""
    body = {"prompt": [[1, 2], [1, 3]], "max_tokens": 200, "temperature": 0, "ignore_eos": True, "request_id": "busy"}
    with httpx.Client(base_url=server.url, timeout=30) as other:
        t = threading.Thread(target=lambda: other.post("/v1/completions", json=body))
        t.start()
        while len(server.engine.requests) < 2:
            time.sleep(0.01)
        for extra, headers, param in (({"request_id": "busy"}, {}, "request_id"),
                                      ({"request_id": "busy-1"}, {}, "request_id"),
                                      ({}, {"X-Request-Id": "busy"}, "x-request-id")):
            r = client.post("/v1/completions", json={"prompt": [1], "max_tokens": 2, **extra}, headers=headers)
            assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
        client.post("/v1/abort", json={"request_id": "busy"})
        t.join(timeout=10)
    assert wait_idle(server.engine)
