"""Reading tool calls out of model output (engine/tool_calls.py): whole and streamed, never raising."""

import json

from reasonrl.engine.tool_calls import ToolStream, parse

CALL = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'


def names(calls):
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]


def test_parse_content_and_calls():
    content, calls = parse("Let me add. " + CALL + "\n" + CALL.replace('"add"', '"mul"'))
    assert content == "Let me add. " and names(calls) == [("add", {"a": 1, "b": 2}), ("mul", {"a": 1, "b": 2})]
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in calls)
    assert parse(CALL)[0] is None  # no text before the call: content null, as OpenAI sends it
    assert parse('<tool_call>{"name": "f", "parameters": {"x": 1}}')[1][0]["function"]["arguments"] == '{"x": 1}'


def test_untrusted_output_is_content_never_an_error():
    for text in ("<tool_call>not json</tool_call>", '<tool_call>{"name": 3}</tool_call>', "<tool_call>[1]</tool_call>",
                 '<tool_call>{"name": "f", "arguments": "x"}</tool_call>', "<tool_call>", "</tool_call>", "",
                 "<tool_call>\ud800</tool_call>", "<tool_call>" + "[" * 100_000 + "</tool_call>"):
        assert parse(text) == (text, [])


def test_an_argument_holding_the_closing_tag_stays_one_call():
    """The grammar of a forced call allows any JSON string: a file's text with </tool_call> in it cut
    the block inside the string, and the call came back as content."""
    text = '<tool_call>\n{"name": "write", "arguments": {"content": "<b>x</b> see </tool_call> tag"}}\n</tool_call>'
    assert names(parse(text)[1]) == [("write", {"content": "<b>x</b> see </tool_call> tag"})]
    stream, calls = ToolStream(), []
    for end in range(1, len(text) + 1):
        calls += stream.push(text[:end], final=end == len(text))[1]
    assert names(calls) == names(parse(text)[1])
    unclosed = text.removesuffix("\n</tool_call>")  # the output ended after the object (end of sequence)
    assert names(parse(unclosed)[1]) == [("write", {"content": "<b>x</b> see </tool_call> tag"})]


def test_streamed_in_any_pieces_gives_the_same_content_and_calls():
    text = "Sure: " + CALL + "\n" + CALL.replace('"a": 1', '"a": 5')
    whole_content, whole_calls = parse(text)
    for step in (1, 3, 7, len(text)):
        stream, content, calls = ToolStream(), "", []
        for end in range(step, len(text) + step, step):
            c, new = stream.push(text[:end], final=end >= len(text))
            content, calls = content + c, calls + new
            assert "<" not in content  # a possible call start is never sent as content
        assert content == whole_content and names(calls) == names(whole_calls)


def test_stream_without_a_valid_call_releases_the_held_text():
    stream = ToolStream()
    assert stream.push("hi <tool", final=False) == ("hi ", [])
    assert stream.push("hi <tool_call>oops", final=False) == ("", [])
    assert stream.push("hi <tool_call>oops", final=True) == ("<tool_call>oops", [])
