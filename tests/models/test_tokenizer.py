import json

import pytest

from reasonrl.models import IncrementalDecoder, Tokenizer

MESSAGES = [{"role": "system", "content": "Reason step by step."},
            {"role": "user", "content": "What is 12 + 30? Ünïcödé 🙂"}]


def test_chat_template_matches_transformers(tokenizer, tmp_path):
    import transformers

    tokenizer.save(tmp_path)
    ours = Tokenizer.from_dir(tmp_path)
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for gen in (True, False):
        text = ours.apply_chat_template(MESSAGES, add_generation_prompt=gen, tokenize=False)
        assert text == ref.apply_chat_template(MESSAGES, add_generation_prompt=gen, tokenize=False)
        ids = ours.apply_chat_template(MESSAGES, add_generation_prompt=gen)
        assert ids == ref(text, add_special_tokens=False)["input_ids"]
    assert text.startswith("<|im_start|>system\nReason step by step.<|im_end|>\n")


def test_eos_ids_are_the_union_of_all_sources(tokenizer, tmp_path):
    tokenizer.save(tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [5, 7]}))
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 9}))
    tok = Tokenizer.from_dir(tmp_path)
    assert tok.eos_token_ids == (tokenizer.eos_token_ids[0], 5, 7, 9)


def test_a_response_ends_with_the_templates_end_of_turn_when_it_stops_generation(tokenizer):
    """SFT targets end where the chat template ends an assistant turn (Llama 3's <|eot_id|> after a
    tokenizer_config EOS of <|end_of_text|>), unless generation would not stop there."""
    im_end, text_end = tokenizer.tok.token_to_id("<|im_end|>"), tokenizer.tok.token_to_id("<|endoftext|>")
    both = Tokenizer(tokenizer.tok, tokenizer.chat_template, "<|endoftext|>", extra_eos_ids=(im_end,))
    assert both.eos_token_ids[0] == text_end and both.end_of_turn_ids == [im_end]
    base = Tokenizer(tokenizer.tok, tokenizer.chat_template, "<|endoftext|>")  # a base model's: <|im_end|> stops nothing
    assert base.end_of_turn_ids == [text_end]
    assert Tokenizer(tokenizer.tok, None, "<|endoftext|>").end_of_turn_ids == [text_end]  # no template
    assert tokenizer.end_of_turn_ids == [im_end]
    from reasonrl.rl.sft import sft_example

    assert sft_example("q", "r", both).response_ids[-1] == im_end  # was <|endoftext|>: the template's turn never ended
    assert sft_example("q", "r", both, chat=False).response_ids[-1] == text_end


def test_chat_template_file_and_missing_template(tokenizer, tmp_path):
    tokenizer.save(tmp_path)
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}[{{ m['content'] }}]{% endfor %}")
    assert Tokenizer.from_dir(tmp_path).apply_chat_template(MESSAGES, tokenize=False) == \
        "[Reason step by step.][What is 12 + 30? Ünïcödé 🙂]"
    bare = Tokenizer(tokenizer.tok)
    with pytest.raises(ValueError, match="no chat template"):
        bare.apply_chat_template(MESSAGES)
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        Tokenizer.from_dir(tmp_path / "missing")


def test_incremental_decoding_equals_full_decoding(tokenizer):
    text = "Ünïcödé text, emoji 🙂🙂 and numbers 3.14159; the quick brown fox. <|im_end|>"
    prompt = tokenizer.encode("prefix ")
    ids = tokenizer.encode(text)
    dec = IncrementalDecoder(tokenizer, prompt)
    pieces = [dec.push([t]) for t in ids]
    assert "".join(pieces) == tokenizer.decode(ids)
    assert any(p == "" for p in pieces)  # multi-byte characters are held back until complete


TEMPLATE_CASES = {
    # TRL's assistant-mask templates
    "generation tag": "{% for m in messages %}{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}"
                      "{% endgeneration %}{% else %}{{ m['content'] }}{% endif %}{% endfor %}",
    # tools and documents are None when not given, not undefined
    "tools is not none": "{% if tools is not none %}TOOLS:{% endif %}{{ messages[0]['content'] }}",
    "documents is not none": "{% if documents is not none %}DOCS:{% endif %}{{ messages[0]['content'] }}",
    "pad token": "{{ pad_token }}{{ messages[0]['content'] }}",
}


@pytest.mark.parametrize("name", sorted(TEMPLATE_CASES))
def test_templates_render_as_transformers_renders_them(tokenizer, tmp_path, name):
    import transformers

    tokenizer.save(tmp_path)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": TEMPLATE_CASES[name],
                                                                "pad_token": tokenizer.eos_token}))
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "there"}]
    ours = Tokenizer.from_dir(tmp_path).apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path).apply_chat_template(messages, add_generation_prompt=False,
                                                                                 tokenize=False)
    assert ours == ref


def test_named_templates_render_tool_use_with_tools_and_are_saved_by_name(tokenizer, tmp_path):
    tokenizer.save(tmp_path)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    named = [{"name": "default", "template": "PLAIN {{ messages[0]['content'] }}"},
             {"name": "tool_use", "template": "TOOLS {{ tools | length }} {{ messages[0]['content'] }}"}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": named}))
    tok = Tokenizer.from_dir(tmp_path)
    msg = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(msg, tokenize=False) == "PLAIN hi"
    assert tok.apply_chat_template(msg, tokenize=False, tools=[{"name": "f"}]) == "TOOLS 1 hi"  # was always the default
    tok.save(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "tokenizer_config.json").read_text())["chat_template"] == named


@pytest.mark.parametrize("skip", [True, False])
def test_incremental_decoding_of_degenerate_runs_keeps_a_bounded_window(tokenizer, skip):
    """A run of skipped special tokens, or of bytes that never make a character, stayed in the window:
    each push decoded the whole run again (quadratic in a degenerate response)."""
    special = tokenizer.encode("<|im_end|>")
    lead = tokenizer.encode("\u00e9")[:1] if len(tokenizer.encode("\u00e9")) > 1 else None
    runs = [tokenizer.encode("ok ") + special * 300 + tokenizer.encode(" after")]
    if lead is not None:
        runs.append(tokenizer.encode("ok ") + lead * 300 + tokenizer.encode(" after"))
    for ids in runs:
        dec = IncrementalDecoder(tokenizer, skip_special_tokens=skip)
        widest = 0
        pieces = []
        for t in ids:
            pieces.append(dec.push([t]))
            widest = max(widest, len(dec.ids))
        pieces.append(dec.push([], final=True))
        assert widest <= 20
        assert "".join(pieces) == tokenizer.decode(ids, skip)


def test_a_resumed_output_cut_inside_a_character_decodes_whole(tokenizer):
    """A resume pushes its given ids at once; with 8 or more of them ending inside a character, the
    bounded window wrote the partial character out as U+FFFD and lost it when the next id completed it."""
    ids = tokenizer.encode("0 1 2 3 4 5 6 7 8 9 a b c 🙂🙂 Ünïcödé")
    cuts = [k for k in range(8, len(ids)) if tokenizer.decode(ids[:k]).endswith("\ufffd")]
    assert cuts  # the emoji and accents span several byte-level ids
    for k in cuts:
        dec = IncrementalDecoder(tokenizer)
        text = dec.push(ids[:k]) + "".join(dec.push([t]) for t in ids[k:]) + dec.push([], final=True)
        assert text == tokenizer.decode(ids), k
