"""The official `openai` client against `reasonrl serve`: completions, chat, streaming, structured
outputs (response_format, vLLM's guided_* and structured_outputs), tool calling (auto, required,
named, none; streamed deltas), the Responses API, and errors as the client's typed exceptions.

The model is the demo policy with a chat template that shows tools and writes calls as Qwen2.5's
does (<tool_call>{json}</tool_call>); its answers are random text, so tool calls in "auto" mode are
forced through a grammar where a test needs one."""

import json
import re
import shutil
from pathlib import Path

import jsonschema
import pytest

openai = pytest.importorskip("openai")
from pydantic import BaseModel, Field  # noqa: E402

from reasonrl.engine import LLMEngine  # noqa: E402
from reasonrl.engine.server import ServeConfig  # noqa: E402

from serve_helpers import POLICY, Server  # noqa: E402

TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools:\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}"
    "Call one as <tool_call>\n{\"name\": ..., \"arguments\": ...}\n</tool_call><|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] or '' }}"
    "{% for c in m['tool_calls'] or [] %}<tool_call>\n{{ {'name': c['function']['name'], "
    "'arguments': c['function']['arguments']} | tojson }}\n</tool_call>{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
ADD = {"type": "function", "function": {"name": "add", "description": "Add two numbers", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                                     "b": {"type": "integer", "minimum": 0, "maximum": 99}},
    "required": ["a", "b"], "additionalProperties": False}}}
CITY = {"type": "function", "function": {"name": "weather", "parameters": {
    "type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}}, "required": ["city"],
    "additionalProperties": False}}}
USER = [{"role": "user", "content": "What is 2+3?"}]
FORCED_CALL = r'Sure\. <tool_call>\n\{"name": "add", "arguments": \{"a": [0-9], "b": [0-9]\}\}\n</tool_call>'


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tmp_path_factory.mktemp("tools_policy")
    shutil.copytree(POLICY, path, dirs_exist_ok=True)
    cfg = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": TOOLS_TEMPLATE}))
    engine = LLMEngine.from_pretrained(path, device="cpu", kv_cache_memory=1 << 23, block_size=8, max_model_len=1024)
    srv = Server(engine, ServeConfig(served_model_name="demo"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=120)


def test_completions_and_chat_plain_and_streamed(client):
    c = client.completions.create(model="demo", prompt="1+1=", max_tokens=5, temperature=0, logprobs=2)
    assert c.choices[0].finish_reason in ("stop", "length") and len(c.choices[0].logprobs.tokens) <= 5
    chunks = list(client.completions.create(model="demo", prompt="1+1=", max_tokens=5, temperature=0, stream=True))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == c.choices[0].text
    r = client.chat.completions.create(model="demo", messages=USER, max_tokens=8, temperature=0)
    assert r.choices[0].message.role == "assistant" and r.usage.completion_tokens <= 8
    streamed = client.chat.completions.create(model="demo", messages=USER, max_tokens=8, temperature=0, stream=True,
                                              stream_options={"include_usage": True})
    parts = list(streamed)
    assert "".join(p.choices[0].delta.content or "" for p in parts if p.choices) == r.choices[0].message.content
    assert parts[-1].usage.completion_tokens == r.usage.completion_tokens


class Answer(BaseModel):  # bounded, so that a random model's answer always ends
    value: int = Field(ge=0, le=999)
    unit: str = Field(max_length=8)
    sure: bool


def test_response_format_json_schema_through_parse(client):
    for seed in range(3):
        r = client.chat.completions.parse(model="demo", messages=USER, response_format=Answer, max_tokens=200,
                                          seed=seed)
        assert isinstance(r.choices[0].message.parsed, Answer), r.choices[0].message.content


def test_response_format_json_object_and_guided_fields(client):
    r = client.chat.completions.create(model="demo", messages=USER, max_tokens=300, seed=1,
                                       response_format={"type": "json_object"})
    if r.choices[0].finish_reason == "stop":  # any JSON object may be long under a random model
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["n"], "additionalProperties": False}
    cases = [({"guided_json": schema}, lambda t: jsonschema.validate(json.loads(t), schema)),
             ({"guided_json": json.dumps(schema)}, lambda t: jsonschema.validate(json.loads(t), schema)),
             ({"guided_regex": r"[A-Z][a-z]{2} \d"}, lambda t: re.fullmatch(r"[A-Z][a-z]{2} \d", t) or 1 / 0),
             ({"guided_choice": ["left", "right"]}, lambda t: t in ("left", "right") or 1 / 0),
             ({"guided_grammar": 'start: "(" ("x" | "y")+ ")"'}, lambda t: re.fullmatch(r"\([xy]+\)", t) or 1 / 0),
             ({"structured_outputs": {"choice": ["up", "down"]}}, lambda t: t in ("up", "down") or 1 / 0),
             ({"structured_outputs": {"regex": "[0-9]{4}"}}, lambda t: re.fullmatch("[0-9]{4}", t) or 1 / 0)]
    for extra, check in cases:
        c = client.completions.create(model="demo", prompt="Say:", max_tokens=60, seed=3, extra_body=extra)
        assert c.choices[0].finish_reason == "stop", (extra, c.choices[0].text)
        check(c.choices[0].text)
        ch = client.chat.completions.create(model="demo", messages=USER, max_tokens=60, seed=4, extra_body=extra)
        check(ch.choices[0].message.content)


def test_streamed_structured_output_is_the_same_text(client):
    kw = dict(model="demo", messages=USER, max_tokens=200, seed=5, response_format={
        "type": "json_schema", "json_schema": {"name": "a", "schema": Answer.model_json_schema()}})
    whole = client.chat.completions.create(**kw).choices[0].message.content
    parts = client.chat.completions.create(**kw, stream=True)
    assert "".join(p.choices[0].delta.content or "" for p in parts if p.choices) == whole
    Answer.model_validate_json(whole)


def test_tool_choice_required_and_named_always_give_valid_calls(client):
    for seed in range(4):  # one call, or (parallel) calls until the model stops, each of them valid
        r = client.chat.completions.create(model="demo", messages=USER, tools=[ADD, CITY], tool_choice="required",
                                           max_tokens=300, seed=seed, parallel_tool_calls=seed == 3)
        choice = r.choices[0]
        assert choice.finish_reason == ("tool_calls" if seed < 3 else choice.finish_reason) and choice.message.tool_calls
        assert len(choice.message.tool_calls) == 1 or seed == 3
        for call in choice.message.tool_calls:
            spec = {"add": ADD, "weather": CITY}[call.function.name]["function"]["parameters"]
            jsonschema.validate(json.loads(call.function.arguments), spec)
            assert call.id.startswith("call_") and call.type == "function"
    named = client.chat.completions.create(model="demo", messages=USER, tools=[ADD, CITY], max_tokens=200, seed=7,
                                           tool_choice={"type": "function", "function": {"name": "weather"}})
    calls = named.choices[0].message.tool_calls
    assert len(calls) == 1 and calls[0].function.name == "weather"
    assert json.loads(calls[0].function.arguments)["city"] in ("Paris", "Oslo")


def test_tool_choice_auto_reads_calls_from_the_output_and_streams_them(client):
    kw = dict(model="demo", messages=USER, tools=[ADD], max_tokens=80, seed=1,
              extra_body={"structured_outputs": {"regex": FORCED_CALL}})
    r = client.chat.completions.create(**kw)
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls" and msg.content == "Sure. "
    assert msg.tool_calls[0].function.name == "add" and set(json.loads(msg.tool_calls[0].function.arguments)) == {"a", "b"}
    parts = [p for p in client.chat.completions.create(**kw, stream=True) if p.choices]
    content = "".join(p.choices[0].delta.content or "" for p in parts)
    deltas = [tc for p in parts for tc in (p.choices[0].delta.tool_calls or [])]
    assert content == "Sure. " and "<tool_call>" not in content
    assert [(d.index, d.function.name, d.function.arguments) for d in deltas] == [
        (0, "add", msg.tool_calls[0].function.arguments)]
    assert parts[-1].choices[0].finish_reason == "tool_calls"
    # no call in the output: plain content, finish_reason stop; tool_choice none reads no calls
    plain = client.chat.completions.create(model="demo", messages=USER, tools=[ADD], max_tokens=6, temperature=0)
    assert plain.choices[0].message.tool_calls is None
    none = client.chat.completions.create(**{**kw, "tool_choice": "none"})
    assert none.choices[0].message.tool_calls is None and "<tool_call>" in none.choices[0].message.content


def test_tool_results_go_back_through_the_chat_template(client, server):
    call = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}
    messages = [*USER, {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "5"}]
    r = client.chat.completions.create(model="demo", messages=messages, tools=[ADD], max_tokens=4, temperature=0)
    assert r.choices[0].message.role == "assistant"
    import httpx
    ids = httpx.post(f"{server.url}/tokenize", json={"messages": messages}).json()["tokens"]
    text = server.engine.tokenizer.decode(ids, skip_special_tokens=False)
    assert '{"name": "add", "arguments": {"a": 2, "b": 3}}' in text  # arguments rendered as an object


def test_responses_api_plain_and_streamed(client):
    kw = dict(model="demo", input="What is 2+3?", max_output_tokens=12, temperature=0)
    r = client.responses.create(**kw)
    assert r.status in ("completed", "incomplete") and r.output_text == r.output[0].content[0].text
    # the SDK types these details as required (reading them raised AttributeError on None)
    assert r.usage.output_tokens_details.reasoning_tokens == 0
    assert r.usage.input_tokens_details.cached_tokens + r.usage.input_tokens_details.cache_write_tokens == r.usage.input_tokens
    events = list(client.responses.create(**kw, stream=True))
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          f"response.{r.status}"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == r.output_text
    assert events[-1].response.output_text == r.output_text and events[-1].response.usage.output_tokens == r.usage.output_tokens


def test_errors_are_the_clients_typed_exceptions(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="demo", messages=USER, extra_body={"guided_regex": "(unclosed"})
    assert err.value.body["param"] == "guided_regex"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="demo", messages=USER, response_format={"type": "json_schema"})
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="demo", messages=USER, tools=[ADD],
                                       tool_choice={"type": "function", "function": {"name": "nope"}})
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="demo", messages=USER, response_format={"type": "json_object"},
                                       extra_body={"guided_regex": "a"})
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="demo", prompt="x", max_tokens=-1)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="other", prompt="x", max_tokens=1)


RESPONSES_ADD = {"type": "function", "name": "add", "parameters": ADD["function"]["parameters"]}


def test_responses_api_tools_structured_text_and_tool_results(client):
    kw = dict(model="demo", input="What is 2+3?", tools=[RESPONSES_ADD], tool_choice="required",
              parallel_tool_calls=False, max_output_tokens=120, temperature=1.0)
    r = client.responses.create(**kw)
    calls = [item for item in r.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "add" and calls[0].call_id.startswith("call_")
    jsonschema.validate(json.loads(calls[0].arguments), RESPONSES_ADD["parameters"])
    events = list(client.responses.create(**kw, stream=True))
    added = [e for e in events if e.type == "response.output_item.added" and e.item.type == "function_call"]
    args = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(added) == 1 and added[0].output_index == 1 and json.loads(args[0].arguments).keys() == {"a", "b"}
    final = events[-1].response
    assert [i.type for i in final.output] == ["message", "function_call"] and final.output[1].arguments == args[0].arguments
    # the call and its result go back as input items
    follow = client.responses.create(model="demo", max_output_tokens=4, temperature=0, tools=[RESPONSES_ADD], input=[
        {"role": "user", "content": [{"type": "input_text", "text": "What is 2+3?"}]},
        {"type": "function_call", "call_id": calls[0].call_id, "name": "add", "arguments": calls[0].arguments},
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "5"}])
    assert follow.output[0].type == "message"
    parsed = client.responses.parse(model="demo", input="2+3?", text_format=Answer, max_output_tokens=200)
    assert isinstance(parsed.output_parsed, Answer)
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="demo", input=[{"type": "web_search_call"}])


def test_async_client_runs_concurrent_constrained_and_free_requests(server):
    import asyncio

    async def main():
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=120)
        free = client.chat.completions.create(model="demo", messages=USER, max_tokens=8, temperature=0)
        choice = client.chat.completions.create(model="demo", messages=USER, max_tokens=8, seed=2,
                                                extra_body={"guided_choice": ["red", "blue"]})
        stream = await client.chat.completions.create(model="demo", messages=USER, max_tokens=60, seed=3, stream=True,
                                                      extra_body={"guided_regex": "[0-9]{3}"})
        streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        a, b = await asyncio.gather(free, choice)
        await client.close()
        return a, b, streamed

    a, b, streamed = asyncio.run(main())
    assert a.choices[0].message.role == "assistant"
    assert b.choices[0].message.content in ("red", "blue") and re.fullmatch("[0-9]{3}", streamed)


def serve_md_example() -> str:
    """docs/serve.md's openai-client example: the python block whose doc-test note names this file."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "serve.md").read_text()
    start = page.index("```python\n", page.index("tests/engine/test_server_openai_client.py runs this block"))
    return page[start + len("```python\n"):page.index("```", start + 3)]


def test_the_serve_docs_example_runs_on_the_demo_policy_as_served(capsys):
    """Its own chat template and no seed: the bounded schemas and max_tokens make every answer end."""
    engine = LLMEngine.from_pretrained(POLICY, device="cpu", kv_cache_memory=1 << 23, block_size=8, max_model_len=1024)
    srv = Server(engine, ServeConfig(served_model_name="policy"))  # the name `reasonrl serve --model .../policy` serves
    try:
        code = serve_md_example()
        assert "http://127.0.0.1:8000/v1" in code
        for _ in range(3):
            exec(code.replace("http://127.0.0.1:8000/v1", f"{srv.url}/v1"), {})
            parsed, arguments = capsys.readouterr().out.splitlines()
            assert re.fullmatch(r"total=\d+", parsed), parsed
            assert set(json.loads(arguments)) == {"a", "b"}, arguments
    finally:
        srv.stop()
