"""Protocol breadth a vLLM user expects: unknown fields ignored (or refused under strict_api), nulls
as defaults, sampling extensions, tokenizer endpoints, /version, model retrieval, stop_reason as
vLLM reports it, and /v1/responses."""

import json

import httpx
import pytest

from reasonrl import __version__
from reasonrl.engine import LLMEngine
from reasonrl.engine.config import EngineConfig
from reasonrl.engine.server import ServeConfig
from reasonrl.models import Tokenizer, load_model
from reasonrl.models.tiny import CHATML

from serve_helpers import Server
from test_penalties import reference


@pytest.fixture(scope="module")
def engine(hf_checkpoint, tokenizer):
    path, _ = hf_checkpoint("qwen2", tokenizer=tokenizer)
    return LLMEngine(load_model(path, "cpu"), Tokenizer.from_dir(path),
                     EngineConfig(kv_cache_memory=1 << 22, block_size=8, max_model_len=256))


@pytest.fixture(scope="module")
def client(engine):
    srv = Server(engine, ServeConfig(served_model_name="tiny"))
    with httpx.Client(base_url=srv.url, timeout=300) as c:
        yield c
    srv.stop()


GREEDY = {"max_tokens": 6, "temperature": 0, "ignore_eos": True, "return_token_ids": True}


def test_unknown_fields_are_ignored_with_a_warning_and_refused_when_strict(client, engine, caplog):
    body = {"prompt": "the quick", **GREEDY}
    plain = client.post("/v1/completions", json=body).json()["choices"][0]["token_ids"]
    with caplog.at_level("WARNING", logger="reasonrl.serve"):
        r = client.post("/v1/completions", json={**body, "store": True, "metadata": {"a": "b"},
                                                 "service_tier": "auto", "reasoning_effort": "low"})
    assert r.status_code == 200 and r.json()["choices"][0]["token_ids"] == plain
    assert any("store" in rec.getMessage() for rec in caplog.records)
    strict = Server(engine, ServeConfig(served_model_name="tiny", strict_api=True))
    try:
        r = httpx.post(f"{strict.url}/v1/completions", json={**body, "store": True})
        assert r.status_code == 400 and r.json()["error"]["param"] == "store"
    finally:
        strict.stop()


@pytest.mark.parametrize("field", ["functions", "function_call"])
def test_legacy_function_calling_is_refused_never_silently_ignored(client, field):
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}],
                                                  field: [{"name": "f"}] if field == "functions" else "auto"})
    error = r.json()["error"]
    assert r.status_code == 400 and error["param"] == field and error["message"].startswith(f"{field}: ")
    replacement = {"functions": "tools", "function_call": "tool_choice"}[field]
    assert "not supported" in error["message"] and repr(replacement) in error["message"]
    assert "structured outputs" not in error["message"]  # the server has them, and tools: only this form is refused


def test_explicit_nulls_mean_defaults(client):
    body = {"prompt": "the quick", **GREEDY}
    plain = client.post("/v1/completions", json=body).json()["choices"][0]["token_ids"]
    nulls = {"n": None, "stop": None, "seed": None, "logprobs": None, "top_p": None, "user": None, "logit_bias": None,
             "presence_penalty": None, "stream": None, "stream_options": None}
    r = client.post("/v1/completions", json={**body, **nulls})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["token_ids"] == plain
    assert client.post("/v1/completions", json={"prompt": None}).status_code == 400


def test_sampling_extensions_reach_the_engine(client, engine, tokenizer):
    body = {"prompt": "the quick", **GREEDY}
    plain = client.post("/v1/completions", json=body).json()["choices"][0]["token_ids"]
    forced = client.post("/v1/completions", json={**body, "logit_bias": {"7": 100}}).json()["choices"][0]["token_ids"]
    assert forced == [7] * 6
    penalised = client.post("/v1/completions", json={**body, "frequency_penalty": 2.0, "presence_penalty": -1.0,
                                                     "repetition_penalty": 1.5}).json()["choices"][0]["token_ids"]
    # the formulas themselves are tested in test_penalties.py: here, that the server hands them over
    assert penalised == reference(engine.model, tokenizer.encode("the quick"), 6, presence=-1.0, frequency=2.0,
                                  repetition=1.5)
    eos = tokenizer.eos_token_ids[0]
    r = client.post("/v1/completions", json={"prompt": "the quick", "max_tokens": 10, "temperature": 0, "min_tokens": 4,
                                             "logit_bias": {str(eos): 100}, "return_token_ids": True}).json()["choices"][0]
    assert r["token_ids"] == r["token_ids"][:4] + [eos] and eos not in r["token_ids"][:4]
    assert r["finish_reason"] == "stop" and r["stop_reason"] is None  # end-of-sequence, as vLLM reports it
    stop = client.post("/v1/completions", json={**body, "ignore_eos": False, "stop_token_ids": [plain[2]]}).json()
    assert stop["choices"][0]["stop_reason"] == plain[2]


def test_chat_generation_prompt_and_continue_final_message(client, tokenizer):
    messages = [{"role": "user", "content": "Where should Bob play?"}, {"role": "assistant", "content": "Bob plays"}]
    r = client.post("/tokenize", json={"messages": messages[:1]}).json()
    assert r["tokens"] == tokenizer.apply_chat_template(messages[:1], add_generation_prompt=True)
    cont = client.post("/v1/chat/completions", json={"messages": messages, "add_generation_prompt": False,
                                                     "continue_final_message": True, **GREEDY}).json()
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
    prefix = text[:text.rindex("Bob plays") + len("Bob plays")]
    same = client.post("/v1/completions", json={"prompt": tokenizer.encode(prefix, add_special_tokens=False), **GREEDY}).json()
    assert cont["choices"][0]["token_ids"] == same["choices"][0]["token_ids"]
    # the text also occurs in what the template writes after it ("end" in "<|im_end|>"): cut after the message
    ends = [messages[0], {"role": "assistant", "content": "end"}]
    cont = client.post("/v1/chat/completions", json={"messages": ends, "add_generation_prompt": False,
                                                     "continue_final_message": True, **GREEDY}).json()
    text = tokenizer.apply_chat_template(ends, add_generation_prompt=False, tokenize=False)
    prompts = {cut: tokenizer.encode(text[:cut], add_special_tokens=False)
               for cut in (text.index("end<|im_end|>") + 3, text.rindex("end") + 3)}  # right, and where rfind cut
    right, wrong = (client.post("/v1/completions", json={"prompt": ids, **GREEDY}).json()["choices"][0]["token_ids"]
                    for ids in prompts.values())
    assert right != wrong and cont["choices"][0]["token_ids"] == right
    bad = client.post("/v1/chat/completions", json={"messages": messages[:1], "continue_final_message": True,
                                                    "add_generation_prompt": False})
    assert bad.status_code == 400 and "continue_final_message" in bad.json()["error"]["message"]


def test_tokenizer_endpoints_version_and_model_retrieval(client, tokenizer):
    ids = client.post("/tokenize", json={"prompt": "12 + 30 = 42"}).json()
    assert ids["tokens"] == tokenizer.encode("12 + 30 = 42") and ids["count"] == len(ids["tokens"])
    assert ids["max_model_len"] == 256
    assert client.post("/detokenize", json={"tokens": ids["tokens"]}).json()["prompt"] == "12 + 30 = 42"
    assert client.post("/detokenize", json={"tokens": [10 ** 6]}).status_code == 400
    assert client.post("/tokenize", json={}).status_code == 400
    info = client.get("/tokenizer_info").json()
    assert info["vocab_size"] == tokenizer.vocab_size and info["chat_template"] == tokenizer.chat_template
    assert client.get("/version").json() == {"version": __version__}
    card = client.get("/v1/models/tiny").json()
    assert card["id"] == "tiny" and isinstance(card["created"], int)
    assert client.get("/v1/models").json()["data"][0] == card
    assert client.get("/v1/models/other").status_code == 404


def test_responses_api_for_text(client):
    r = client.post("/v1/responses", json={"input": "Where should Bob play?", "instructions": "Answer briefly.",
                                           "max_output_tokens": 5, "temperature": 0, "store": False})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "response" and body["output"][0]["type"] == "message"
    text = body["output"][0]["content"][0]["text"]
    chat = client.post("/v1/chat/completions", json={"messages": [{"role": "system", "content": "Answer briefly."},
                                                                  {"role": "user", "content": "Where should Bob play?"}],
                                                     "max_tokens": 5, "temperature": 0}).json()
    assert text == chat["choices"][0]["message"]["content"]
    assert body["usage"]["output_tokens"] <= 5 and body["status"] in ("completed", "incomplete")
    # errors name the fields this request sent, not those of the chat request it is translated into
    for extra, param in (({"max_output_tokens": 10 ** 6}, "max_output_tokens"), ({"text": {"format": {"type": "xml"}}}, "text.format"),
                         ({"input": [{"role": "robot", "content": "x"}]}, "input")):
        r = client.post("/v1/responses", json={"input": "x", **extra})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 10 ** 6})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_completion_tokens"
    r = client.post("/v1/responses", json={"input": "x", "stream": True, "max_output_tokens": 3})
    assert r.status_code == 200 and r.text.startswith("event: response.created\ndata: ")
    assert "[DONE]" not in r.text and "event: response." in r.text.rstrip().split("\n\n")[-1]


@pytest.mark.parametrize("reason,status,why", [("stop", "completed", None), ("length", "incomplete", "max_output_tokens"),
                                               ("abort", "incomplete", "aborted")])


def test_an_aborted_response_is_incomplete_not_completed(reason, status, why):
    """A /v1/responses answer stopped by /v1/abort said status "completed" (its stream ended with
    response.completed): a cut answer that looked whole."""
    from types import SimpleNamespace

    from reasonrl.engine.sequence import CompletionOutput, RequestOutput
    from reasonrl.engine.server.responses import response_object

    out = RequestOutput("r", [1], [CompletionOutput(0, [5, 6], [-0.1, -0.2], "ab", reason, None, None, 0)], True)
    body = SimpleNamespace(parallel_tool_calls=True, tool_choice=None, tools=None, temperature=1.0, top_p=1.0)
    obj = response_object(out, "m", 0, body, 1)
    assert obj["status"] == status and obj["output"][0]["status"] == status
    assert obj["incomplete_details"] == (None if why is None else {"reason": why})


def test_continue_final_message_keeps_an_image_messages_parts():
    """A last message of an image and text (a vision-language server) continues after its text, the
    image kept; one without text is refused."""
    from reasonrl.engine.server.errors import APIError
    from reasonrl.engine.server.prepare import _continue_final, _mark_final

    message = {"role": "assistant", "content": [{"type": "image"}, {"type": "text", "text": "The cat is"}]}
    marked, final = _mark_final(message)
    wrapped = marked["content"]
    assert final == "The cat is"
    assert wrapped[0] == {"type": "image"}
    assert _continue_final("<vision>" + wrapped[1]["text"] + "<|im_end|>") == "<vision>The cat is"
    only_image = {"role": "assistant", "content": [{"type": "image"}]}
    assert _mark_final(only_image) == (only_image, "")  # nothing to mark: the rendered text has no tag
    with pytest.raises(APIError, match="continue_final_message needs the last message to have text"):
        _continue_final("<vision><|im_end|>")


# Trimmed from the real templates: Qwen3's reasoning extraction (only what follows `<think>` is kept,
# its own think block written around it; a first system message goes in a header block, any other
# role it does not know is dropped) and Llama-3.1's (`| trim` on each message, a first system
# message folded into its system turn, every other role written under its own header).
QWEN3_STYLE = (
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- set content = message.content %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}{%- set reasoning_content = '' %}"
    "{%- if '</think>' in content %}"
    "{%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}"
    "{%- if loop.last or reasoning_content %}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}"
    "{%- else %}{{- '<|im_start|>assistant\\n' + content }}{%- endif %}{{- '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
LLAMA31_STYLE = (
    "{{- bos_token }}{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content']|trim %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + system_message + '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")
R1_STYLE = (  # R1-Distill's: an assistant message's think block dropped
    "{%- for message in messages %}{%- if message.role == 'user' %}{{- '<|User|>' + message.content }}"
    "{%- else %}{%- set content = message.content %}{%- if '</think>' in content %}"
    "{%- set content = content.split('</think>')[-1] %}{%- endif %}{{- '<|Assistant|>' + content + '<|end|>' }}"
    "{%- endif %}{%- endfor %}")
QWEN_HEAD, LLAMA_HEAD = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n", (
    "<|start_header_id|>system<|end_header_id|>\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
    "What is 2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


def _preparer(tokenizer, template):
    from reasonrl.engine.server.prepare import Preparer

    return Preparer(Tokenizer(tokenizer.tok, template, eos_token="<|im_end|>"), 4096, ServeConfig())


def test_continue_final_message_renders_what_transformers_does(tokenizer):
    """An assistant prefill with a think block (`<think>\\n\\n</think>\\n\\n`, how a client turns Qwen3's
    thinking off) was a 400 on Qwen3's template: the start sentinel went before `<think>`, which its
    reasoning extraction drops. And on Llama-3.1's, "The answer is " kept its trailing space where the
    template trims the message (transformers and vLLM cut it). The prompt is now what transformers'
    apply_chat_template(continue_final_message=True) renders: up to the message's end, trimmed as the
    template trims it; a template that drops part of the text still gets a 400."""
    from reasonrl.engine.server.errors import APIError

    cases = [(QWEN3_STYLE, "<think>\n\n</think>\n\n", QWEN_HEAD + "<think>\n\n</think>\n\n"),
             (QWEN3_STYLE, "<think>\nadd them\n</think>\n\nThe answer is", QWEN_HEAD + "<think>\nadd them\n</think>\n\nThe answer is"),
             (QWEN3_STYLE, "The answer is ", QWEN_HEAD + "<think>\n\n</think>\n\nThe answer is "),  # not trimmed: kept
             (LLAMA31_STYLE, "The answer is ", LLAMA_HEAD + "The answer is"),
             (LLAMA31_STYLE, "The answer is\n\n", LLAMA_HEAD + "The answer is"),
             (LLAMA31_STYLE, "The answer is", LLAMA_HEAD + "The answer is"),
             # nothing of the message survives the trim: what the template wrote before it stays
             (LLAMA31_STYLE, "", LLAMA_HEAD), (LLAMA31_STYLE, "\n", LLAMA_HEAD)]
    for template, partial, expected in cases:
        body = {"messages": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": partial}],
                "add_generation_prompt": False, "continue_final_message": True, "max_tokens": 4}
        job = _preparer(tokenizer, template).chat(json.dumps(body).encode())
        assert tokenizer.decode(job.prompts[0], skip_special_tokens=False) == expected, (partial, template[:20])
        assert job.prompts[0] == tokenizer.encode(expected, add_special_tokens=False)
    # a template that drops the think block: nothing to continue as sent (transformers refuses it too)
    body["messages"][-1]["content"] = "<think>\nadd\n</think>\n\nThe answer is"
    with pytest.raises(APIError, match="continue_final_message needs the last message to have text"):
        _preparer(tokenizer, R1_STYLE).chat(json.dumps(body).encode())
    body["messages"][-1]["content"] = "The answer is"  # with nothing dropped, it continues
    job = _preparer(tokenizer, R1_STYLE).chat(json.dumps(body).encode())
    assert tokenizer.decode(job.prompts[0], skip_special_tokens=False) == "<|User|>What is 2+2?<|Assistant|>The answer is"


def test_a_developer_message_is_rendered_as_a_system_message(tokenizer):
    """OpenAI's `developer` role (accepted on chat completions and in /v1/responses input) was dropped
    by Qwen's templates, which render only the roles they know, and written under a `developer`
    header by Llama's. It is the system role under its newer name: rendered as `system`, unless the
    template itself names the role."""
    messages = [{"role": "developer", "content": "Always answer in French."}, {"role": "user", "content": "What is 2+2?"}]
    system = [{**messages[0], "role": "system"}, messages[1]]
    for template in (QWEN3_STYLE, LLAMA31_STYLE, CHATML):
        preparer = _preparer(tokenizer, template)
        expected = preparer.tokenizer.apply_chat_template(system, add_generation_prompt=True, tokenize=False)
        assert "Always answer in French." in expected
        chat = preparer.chat(json.dumps({"messages": messages, "max_tokens": 4}).encode())
        responses = preparer.responses(json.dumps({"input": [{"type": "message", **m} for m in messages],
                                                   "max_output_tokens": 4}).encode())
        assert tokenizer.decode(chat.prompts[0], skip_special_tokens=False) == expected, template[:20]
        assert responses.prompts[0] == chat.prompts[0]
    knows = CHATML.replace("{{ message['role'] }}", "{{ 'dev' if message['role'] == 'developer' else message['role'] }}")
    preparer = _preparer(tokenizer, knows)
    chat = preparer.chat(json.dumps({"messages": messages, "max_tokens": 4}).encode())
    assert tokenizer.decode(chat.prompts[0], skip_special_tokens=False).startswith("<|im_start|>dev\nAlways")


def test_one_stop_string_may_be_longer_than_16_characters(client):
    """The 16-item bound on `stop` also capped a single string at 16 characters."""
    free = client.post("/v1/completions", json={"prompt": "the quick", **GREEDY, "max_tokens": 30}).json()["choices"][0]
    stop = free["text"][3:23]
    r = client.post("/v1/completions", json={"prompt": "the quick", **GREEDY, "max_tokens": 30, "stop": stop})
    assert len(stop) == 20 and r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == free["text"][:3] and r.json()["choices"][0]["stop_reason"] == stop
    r = client.post("/v1/completions", json={"prompt": "x", "stop": ["a"] * 17})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stop" and "16" in r.json()["error"]["message"]


def test_newer_fields_inside_stream_options_and_tools_are_ignored_with_a_warning(client, engine, caplog):
    """The SDK's stream_options.include_obfuscation, vLLM's continuous_usage_stats and a tool's
    cache_control were 400s, where the same rule as for top-level fields applies."""
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    body = {"messages": [{"role": "user", "content": "x"}], **GREEDY, "stream": True, "tools": [tool, tool],
            "stream_options": {"include_usage": True, "include_obfuscation": False, "continuous_usage_stats": True}}
    plain = client.post("/v1/chat/completions",
                        json={**body, "tools": [tool], "stream_options": {"include_usage": True}})
    cached = {**tool, "cache_control": {"type": "ephemeral"}}
    with caplog.at_level("WARNING", logger="reasonrl.serve"):
        r = client.post("/v1/chat/completions", json={**body, "tools": [tool, cached]})
    assert r.status_code == 200 and r.text.count('"usage"') == plain.text.count('"usage"') == 1, r.text
    warned = " ".join(rec.getMessage() for rec in caplog.records)
    assert all(name in warned for name in ("stream_options.include_obfuscation", "stream_options.continuous_usage_stats",
                                           "tools.cache_control"))
    strict = Server(engine, ServeConfig(served_model_name="tiny", strict_api=True))
    try:
        r = httpx.post(f"{strict.url}/v1/chat/completions", json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == "stream_options.continuous_usage_stats", r.text
    finally:
        strict.stop()


def test_a_responses_tool_field_of_its_own_is_ignored_with_a_warning_not_rendered(client, engine, caplog):
    """A Responses tool carries the function's fields at its top level; its `cache_control` went into the
    function the chat template rendered (the prompt grew by it) and was not reported, even under --strict-api."""
    tool = {"type": "function", "name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "string"}}}}
    body = {"input": "x", "max_output_tokens": 2, "temperature": 0}
    plain = client.post("/v1/responses", json={**body, "tools": [tool]}).json()
    with caplog.at_level("WARNING", logger="reasonrl.serve"):
        r = client.post("/v1/responses", json={**body, "tools": [{**tool, "cache_control": {"type": "ephemeral"},
                                                                  "x_responses_only": 1}]})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["input_tokens"] == plain["usage"]["input_tokens"]
    assert r.json()["tools"] == plain["tools"] and "cache_control" not in r.text and "x_responses_only" not in r.text
    # warned once per field name per server: a name no other test sends
    assert "tools.x_responses_only" in " ".join(rec.getMessage() for rec in caplog.records)
    strict = Server(engine, ServeConfig(served_model_name="tiny", strict_api=True))
    try:
        r = httpx.post(f"{strict.url}/v1/responses", json={**body, "tools": [tool, {**tool, "cache_control": {}}]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "tools.1.cache_control", r.text
    finally:
        strict.stop()


@pytest.mark.parametrize("field,value", [("previous_response_id", "resp_123"), ("conversation", {"id": "conv_1"})])
def test_stored_conversations_are_refused_not_dropped(client, field, value):
    """A follow-up by previous_response_id was answered as if it were the first turn."""
    r = client.post("/v1/responses", json={"input": "and then?", "max_output_tokens": 3, field: value})
    error = r.json()["error"]
    assert r.status_code == 400 and error["param"] == field and "stored conversations" in error["message"]


def test_chat_logprob_bytes_are_the_tokens_own_bytes(client, tokenizer):
    """A token holding part of a character decodes alone to U+FFFD, and its `bytes` were U+FFFD's."""
    byte_token = tokenizer.tok.token_to_id("Ã")  # byte 0xC3 in the byte-level alphabet
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], **GREEDY,
                                                  "logprobs": True, "top_logprobs": 2,
                                                  "logit_bias": {str(byte_token): 100}}).json()
    first = r["choices"][0]["logprobs"]["content"][0]
    assert r["choices"][0]["token_ids"][0] == byte_token and first["token"] == "\ufffd" and first["bytes"] == [0xC3]
    assert first["top_logprobs"][0]["bytes"] == [0xC3]


def test_token_bytes_undo_byte_level_and_byte_fallback_tokens(tokenizer):
    from tokenizers import Tokenizer as HFTokenizer, decoders, models

    from reasonrl.models.tokenizer import Tokenizer as ReasonTokenizer

    text = "é🙂 ok"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert b"".join(tokenizer.token_bytes(i) for i in ids) == text.encode()
    vocab = {"<unk>": 0, "▁ok": 1, **{f"<0x{b:02X}>": 2 + b for b in range(256)}}
    fallback = HFTokenizer(models.BPE(vocab, [], unk_token="<unk>", byte_fallback=True))
    fallback.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    sentencepiece = ReasonTokenizer(fallback)
    assert [sentencepiece.token_bytes(i) for i in (2 + 0xC3, 2 + 0xA9, 1)] == [b"\xc3", b"\xa9", b" ok"]


@pytest.mark.parametrize("path,body,param,says", [
    ("/v1/completions", {"prompt": 5}, "prompt", "prompt: "),
    ("/v1/completions", {"prompt": "x", "stop": [""]}, "stop", "stop.0: String should have at least 1 character"),
    ("/v1/completions", {"prompt": "x", "logit_bias": {"x": 1.0}}, "logit_bias", "token ids"),
    ("/v1/completions", {"prompt": [1], "max_tokens": 2, "resume": {"token_ids": [5, 6, 7], "logprobs": [-1.0] * 3}},
     "resume.token_ids", "more than max_tokens (2)"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, "messages.0.content", "messages.0.content: "),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "tool_choice": "any"}, "tool_choice", "'auto'"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}, "tool_choice",
     "needs tools"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs",
     "logprobs: true"),
    ("/v1/responses", {"input": "x", "text": {"format": {"type": "json_schema", "json_schema": {"schema": {}}}}},
     "text.format", 'or {"type": "json_schema", "name": ..., "schema": {...}}'),
])
def test_errors_name_the_field_as_the_client_sent_it(client, path, body, param, says):
    """`param` held pydantic's union labels (`stop.list[constrained-str].0`, `prompt.str`), null for
    checks of the whole body; a chat top_logprobs without logprobs was served, a resume longer than
    max_tokens returned more tokens than asked, and a bad text.format was described in chat's layout."""
    r = client.post(path, json=body)
    error = r.json()["error"]
    assert r.status_code == 400 and error["param"] == param and says in error["message"], r.text
