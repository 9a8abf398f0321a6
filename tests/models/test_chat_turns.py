"""How chats render for templates that reason: text parts, Qwen3's think block in a trained turn, and
templates that open <think> in the generation prompt (trimmed copies of the public templates' logic)."""

import pytest

from reasonrl.models.chat import ChatEncoder, text_only
from reasonrl.models.tiny import make_tokenizer
from reasonrl.models.tokenizer import Tokenizer
from reasonrl.rl.sft import load_sft_data, sft_example

# Qwen3's: a string content renders, anything else as ''; the last assistant turn after the last query gets a
# <think> block, its reasoning split off the content
QWEN3 = (
    "{%- set ns = namespace(last_query_index=messages|length - 1) %}"
    "{%- for message in messages[::-1] %}{%- set index = (messages|length - 1) - loop.index0 %}"
    "{%- if message.role == 'user' and ns.last_query_index == messages|length - 1 %}"
    "{%- set ns.last_query_index = index %}{%- endif %}{%- endfor %}"
    "{%- for message in messages %}"
    "{%- if message.content is string %}{%- set content = message.content %}{%- else %}{%- set content = '' %}"
    "{%- endif %}"
    "{%- if message.role == 'user' or message.role == 'system' %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == 'assistant' %}{%- set reasoning_content = '' %}"
    "{%- if '</think>' in content %}"
    "{%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}"
    "{%- if loop.index0 > ns.last_query_index and (loop.last or reasoning_content) %}"
    "{{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n'"
    " + content.lstrip('\\n') }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + content }}{%- endif %}"
    "{{- '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}")
# DeepSeek-R1-Distill's newer one: assistant turns lose their reasoning; the generation prompt opens <think>
R1 = ("{% for message in messages %}{% if message['role'] == 'user' %}{{ 'User: ' + message['content'] }}"
      "{% elif message['role'] == 'assistant' %}{% set content = message['content'] %}"
      "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
      "{{ 'Assistant: ' + content + '<|im_end|>' }}{% endif %}{% endfor %}"
      "{% if add_generation_prompt %}{{ 'Assistant: <think>\\n' }}{% endif %}")


@pytest.fixture(scope="module")
def base():
    corpus = ["What is 2+2? add them The answer is 4. User: Assistant: Think"] * 20
    return make_tokenizer(corpus, vocab_size=320, extra_special_tokens=["<think>", "</think>"])


def with_template(base, template):
    return Tokenizer(base.tok, template, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def target(tok, prompt, response):
    return tok.decode(sft_example(prompt, response, tok).response_ids, skip_special_tokens=False)


def test_text_parts_render_as_their_joined_text(base, tmp_path):
    """Qwen3's template put nothing of a list content in the prompt (the question was gone from the trained
    prompt), Llama 3.1's its Python repr; the server joined the parts."""
    tok = with_template(base, QWEN3)
    parts = [{"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "2+2?"}]}]
    plain = [{"role": "user", "content": "What is 2+2?"}]
    assert ChatEncoder(tok)(parts) == ChatEncoder(tok)(plain)
    assert "What is 2+2?" in tok.decode(sft_example(parts, "4", tok).prompt_ids, skip_special_tokens=False)
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": [{"role": "user", "content": [{"type": "text", "text": 7}]}], "response": "4"}\n')
    with pytest.raises(ValueError, match=r"d.jsonl:1: messages.0.content.0: a text part is"):
        load_sft_data(data, tok)
    assert text_only(plain) == plain


def test_a_trained_turn_is_the_one_the_template_writes(base):
    """Qwen3's template writes an empty think block before an answer without reasoning; SFT trained on the
    bare answer, teaching the model to skip the block."""
    tok, prompt = with_template(base, QWEN3), "What is 2+2?"
    assert target(tok, prompt, "The answer is 4.") == "<think>\n\n</think>\n\nThe answer is 4.<|im_end|>"
    trace = "<think>\nadd them\n</think>\n\nThe answer is 4."
    assert target(tok, prompt, trace) == trace + "<|im_end|>"
    chatml = with_template(base, base.chat_template)  # a template without reasoning: the response as it is
    assert target(chatml, prompt, "The answer is 4.") == "The answer is 4.<|im_end|>"


def test_a_trace_is_not_reopened_after_a_prompt_that_opened_it(base):
    """R1-Distill's newer template opens <think> in the generation prompt and drops the reasoning of assistant
    turns: a trace that opens <think> again trained on <think> twice."""
    tok = with_template(base, R1)
    assert target(tok, "What is 2+2?", "<think>\nadd them\n</think>\n\nThe answer is 4.") == \
        "add them\n</think>\n\nThe answer is 4.<|im_end|>"
    assert target(tok, "What is 2+2?", "The answer is 4.") == "The answer is 4.<|im_end|>"


def test_template_variables_reach_the_prompt_and_the_trained_turn(base, tmp_path):
    """Qwen3's non-thinking mode ({enable_thinking: false}) could not be asked for in rollouts, SFT or eval."""
    from reasonrl.envs.letter import LetterEnvironment
    from reasonrl.models import load_model
    from reasonrl.models.tiny import make_checkpoint
    from reasonrl.rl.config import load_config
    from reasonrl.rl.trainer import Trainer

    tok, off = with_template(base, QWEN3), {"enable_thinking": False}
    chat = [{"role": "user", "content": "What is 2+2?"}]
    rendered = tok.decode(ChatEncoder(tok, template_kwargs=off)(chat), skip_special_tokens=False)
    assert rendered.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    example = sft_example(chat, "The answer is 4.", ChatEncoder(tok, template_kwargs=off))
    assert tok.decode(example.response_ids, skip_special_tokens=False) == "The answer is 4.<|im_end|>"

    ckpt = make_checkpoint(tmp_path / "policy", "qwen2", tok, hidden_size=32, num_layers=1)
    cfg = load_config(None, {"model.path": str(ckpt), "train.run_dir": str(tmp_path / "run"), "env.name": "letter",
                             "engine.kv_cache_memory": 1 << 22, "rollout.chat_template_kwargs": off})
    trainer = Trainer(cfg, LetterEnvironment(), load_model(ckpt), tok, console=False)
    try:
        assert tok.decode(trainer.rollout.encoder(chat), skip_special_tokens=False) == rendered
    finally:
        trainer.close()


def test_a_developer_message_renders_as_system_everywhere(base, tmp_path):
    """The server rendered OpenAI's developer role as system; SFT, local eval and LLM.chat dropped it (Qwen's
    templates render only the roles they know), so one checkpoint got two prompts."""
    tok = with_template(base, QWEN3)
    developer = [{"role": "developer", "content": "Answer in French."}, {"role": "user", "content": "What is 2+2?"}]
    system = [{**developer[0], "role": "system"}, developer[1]]
    assert ChatEncoder(tok)(developer) == ChatEncoder(tok)(system)
    assert "Answer in French." in tok.decode(sft_example(developer, "4", tok).prompt_ids, skip_special_tokens=False)


@pytest.mark.parametrize("kwargs, message", [({"add_generation_prompt": False}, "may not set add_generation_prompt"),
                                             ({"tokenize": False}, "may not set tokenize"),
                                             ("enable_thinking", "must be a mapping")])
def test_template_variables_the_renderer_sets_are_refused_by_name(kwargs, message, tmp_path):
    """rollout.chat_template_kwargs {add_generation_prompt: false} loaded the model, then failed with a
    TypeError traceback ({tokenize: false}: "prompt must be a list of token ids")."""
    from reasonrl.eval.harness import EvalConfig
    from reasonrl.rl.config import load_config
    from reasonrl.rl.sft import SFTConfig

    with pytest.raises(ValueError, match="rollout.chat_template_kwargs: " + (".*" + message if kwargs != "enable_thinking"
                                                                            else "expected dict")):
        load_config(None, {"model.path": "x", "rollout.chat_template_kwargs": kwargs})
    with pytest.raises(ValueError, match=message):
        SFTConfig(chat_template_kwargs=kwargs)
    with pytest.raises(ValueError, match=message):
        EvalConfig(benchmark="ttt:all", model="m", out=tmp_path, base_url="http://127.0.0.1:1/v1",
                   chat_template_kwargs=kwargs)


def test_an_sft_run_started_on_the_responses_as_given_resumes_on_them(base, tmp_path, capsys):
    """Runs saved before SFT trained the template's turn fingerprinted other targets: on Qwen3's template a
    resume was refused as "not the data this run was trained on", and --overwrite lost the run."""
    import json

    import torch

    from reasonrl.cli import main
    from reasonrl.models.tiny import make_checkpoint
    from reasonrl.rl.checkpoint import latest_checkpoint
    from reasonrl.rl.sft import data_fingerprint

    tok = with_template(base, QWEN3)
    ckpt = make_checkpoint(tmp_path / "base", "qwen2", tok, hidden_size=32, num_layers=1)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": "What is 2+2?", "response": "The answer is 4."}) + "\n"
                            for _ in range(8)))
    args = ["sft", "--model", str(ckpt), "--data", str(data), "--out", str(tmp_path / "run"), "--samples-per-step", "4",
            "--save-every", "1"]
    assert main([*args, "--epochs", "1"]) == 0
    state_file = latest_checkpoint(tmp_path / "run") / "trainer_state.pt"
    state = torch.load(state_file, weights_only=False)
    assert state["sft"]["turn"] == "template"
    del state["sft"]["turn"]  # as such a run saved it: its fingerprint of the responses as given
    state["sft"]["data"] = data_fingerprint(load_sft_data(data, tok, turn="response"))
    torch.save(state, state_file)
    capsys.readouterr()
    assert main([*args, "--epochs", "2", "--accept-changes"]) == 0
    assert "it goes on training the responses as given" in capsys.readouterr().err
    assert torch.load(latest_checkpoint(tmp_path / "run") / "trainer_state.pt", weights_only=False)["sft"]["turn"] == \
        "response"
