"""Prompt log-probs over HTTP: `echo` with `logprobs` on /v1/completions (what lm-eval's
log-likelihood and multiple-choice tasks send) and vLLM's `prompt_logprobs`, equal to a training
forward of the served model."""

import httpx
import pytest
import torch

from reasonrl.engine import LLMEngine
from reasonrl.engine.config import EngineConfig
from reasonrl.engine.server import ServeConfig
from reasonrl.models import Tokenizer, load_model

from serve_helpers import Server


@pytest.fixture(scope="module")
def served(hf_checkpoint, tokenizer):
    path, _ = hf_checkpoint("qwen2", tokenizer=tokenizer)
    model = load_model(path, "cpu")
    srv = Server(LLMEngine(model, Tokenizer.from_dir(path), EngineConfig(kv_cache_memory=1 << 22, block_size=8,
                                                                         max_model_len=256)),
                 ServeConfig(served_model_name="tiny"))
    with httpx.Client(base_url=srv.url, timeout=300) as client:
        yield client, model, tokenizer
    srv.stop()


def forward_logprobs(model, ids):
    with torch.no_grad():
        logprobs = model.compute_logits(model.forward_padded(torch.tensor([ids])))[0, :-1].log_softmax(-1)
    return logprobs.gather(1, torch.tensor(ids[1:])[:, None])[:, 0], logprobs


def loglikelihood(client, context: str, continuation: str) -> tuple[float, bool, int]:
    """What lm-eval's OpenAI-completions backend does: echo the whole text with max_tokens=1 and
    logprobs=1, sum the continuation tokens' log-probs (found by text_offset), and check each was
    the top token. Returns (log-likelihood, greedy, continuation tokens)."""
    r = client.post("/v1/completions", json={"prompt": context + continuation, "max_tokens": 1, "temperature": 0,
                                             "logprobs": 1, "echo": True, "seed": 1})
    assert r.status_code == 200, r.text
    lp = r.json()["choices"][0]["logprobs"]
    start = next(i for i, off in enumerate(lp["text_offset"]) if off >= len(context))
    end = len(lp["tokens"]) - 1  # the last token is the generated one
    values = lp["token_logprobs"][start:end]
    greedy = all(max(top.values()) <= v + 1e-6 for top, v in zip(lp["top_logprobs"][start:end], values))
    return sum(values), greedy, end - start


def test_echo_returns_the_prompt_and_its_logprobs_first(served):
    client, model, tok = served
    text = "The quick brown fox jumps"
    ids = tok.encode(text)
    r = client.post("/v1/completions", json={"prompt": text, "max_tokens": 3, "temperature": 0, "logprobs": 2,
                                             "echo": True, "ignore_eos": True}).json()
    choice = r["choices"][0]
    lp = choice["logprobs"]
    assert choice["text"].startswith(text) and len(lp["tokens"]) == len(ids) + 3
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    expected, full = forward_logprobs(model, ids)
    torch.testing.assert_close(torch.tensor(lp["token_logprobs"][1:len(ids)]), expected, atol=1e-5, rtol=1e-5)
    for pos in range(1, len(ids)):  # the top-2 of each prompt position, keyed by token string (two ids may
        top2 = full[pos - 1].topk(2).values.tolist()  # decode to the same string, as in OpenAI's layout)
        assert 1 <= len(lp["top_logprobs"][pos]) <= 2
        assert all(any(abs(v - t) < 1e-5 for t in top2) for v in lp["top_logprobs"][pos].values())
    # offsets walk the returned text token by token
    assert lp["text_offset"][0] == 0 and lp["text_offset"] == sorted(lp["text_offset"])
    assert "".join(lp["tokens"][:len(ids)]) == text  # (a generated token may be part of a character)
    assert r["usage"]["prompt_tokens"] == len(ids)


def test_a_log_likelihood_and_a_multiple_choice_task_run_as_lm_eval_runs_them(served):
    client, model, tok = served
    context = "Alice places a white stone at"
    options = [" E.", " C.", " the quick", " 42"]
    scored = [loglikelihood(client, context, o) for o in options]
    for option, (ll, _greedy, n) in zip(options, scored):
        ids = tok.encode(context + option)
        expected = forward_logprobs(model, ids)[0][-n:].sum().item()
        assert ll == pytest.approx(expected, abs=1e-4) and n >= 1
    # the multiple-choice answer is the option the served model finds likeliest, as a forward says
    forward = [forward_logprobs(model, tok.encode(context + o))[0][-n:].sum().item() for o, (_, _, n) in zip(options, scored)]
    assert max(range(4), key=lambda i: scored[i][0]) == max(range(4), key=lambda i: forward[i])


def test_prompt_logprobs_extension_gives_each_prompt_token_rank_and_top_n(served):
    client, model, tok = served
    ids = tok.encode("def add(a, b):")
    r = client.post("/v1/completions", json={"prompt": ids, "max_tokens": 1, "prompt_logprobs": 2}).json()
    rows = r["choices"][0]["prompt_logprobs"]
    assert rows[0] is None and len(rows) == len(ids)
    expected, full = forward_logprobs(model, ids)
    for pos in range(1, len(ids)):
        mine = rows[pos][str(ids[pos])]
        assert mine["logprob"] == pytest.approx(expected[pos - 1].item(), abs=1e-5)
        assert mine["rank"] == int((full[pos - 1] > expected[pos - 1]).sum()) + 1
        assert len(rows[pos]) <= 3 and all(v["rank"] >= 1 for v in rows[pos].values())


def test_streamed_echo_sends_the_prompt_in_the_first_chunk(served):
    client, _, _ = served
    body = {"prompt": "the quick", "max_tokens": 4, "temperature": 0, "echo": True, "ignore_eos": True, "logprobs": 1}
    whole = client.post("/v1/completions", json=body).json()["choices"][0]
    texts, offsets = [], []
    with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                choice = httpx.Response(200, content=line[6:]).json()["choices"][0]
                offsets += choice["logprobs"]["text_offset"]
                texts.append(choice["text"])
    assert texts[0].startswith("the quick") and "".join(texts) == whole["text"]
    # the tokens' offsets, the echoed prompt's included, are the unstreamed ones: running sums of the
    # token strings (vLLM anchors each chunk at the text sent so far, which repeats offsets while a
    # stop string holds text back, and differs wherever token strings do not add up to the text)
    # (a reader slower than the engine gets the steps it missed in one chunk: so chunks may be fewer than steps)
    assert offsets == whole["logprobs"]["text_offset"] and offsets[0] == 0


@pytest.mark.parametrize("echo", [False, True])
def test_streamed_text_offsets_are_the_unstreamed_ones_while_a_stop_string_holds_text_back(served, echo):
    """The text streamed lags the tokens while it could still start a stop string; the tokens' offsets
    must not (they repeated, [0, 0, ..., 1, 2], with a 10-character stop string before)."""
    client, _, _ = served
    body = {"prompt": "the quick", "max_tokens": 12, "temperature": 0, "ignore_eos": True, "logprobs": 1,
            "echo": echo, "stop": ["ZZZZZZZZZZ"]}
    whole = client.post("/v1/completions", json=body).json()["choices"][0]["logprobs"]["text_offset"]
    streamed = []
    with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                streamed += httpx.Response(200, content=line[6:]).json()["choices"][0]["logprobs"]["text_offset"]
    assert streamed == whole and len(set(whole)) == len(whole)
