"""lm-evaluation-harness against `reasonrl serve`, where the package is installed (it is not in the
test extras: it brings ~45 packages, ~600 MB). Its `local-completions` backend runs a small local
multiple-choice task (log-likelihoods from `echo` + `logprobs`) and a generation task, and the
log-likelihoods it reports equal the engine's own prompt log-probs of the same tokens."""

import json
import math

import pytest

lm_eval = pytest.importorskip("lm_eval")

from reasonrl.engine import LLMEngine, SamplingParams  # noqa: E402
from reasonrl.engine.server import ServeConfig  # noqa: E402

from serve_helpers import ENGINE, POLICY, Server  # noqa: E402

DOCS = [{"question": f"Add: {a} + {b} =", "choices": [f" {a + b}", f" {a + b + 1}", f" {a * b + 7}"], "answer": 0}
        for a, b in [(1, 2), (3, 4), (5, 6), (2, 9)]]
MC = """task: reasonrl_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""
GEN = """task: reasonrl_tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{choices[0]}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
metric_list:
  - metric: exact_match
"""


@pytest.fixture(scope="module")
def served():
    srv = Server(LLMEngine.from_pretrained(POLICY, **ENGINE), ServeConfig(served_model_name="demo"))
    yield srv
    srv.stop()


def test_lm_eval_runs_multiple_choice_and_generation_tasks(served, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (tmp_path / "mc.yaml").write_text(MC.format(data=data))
    (tmp_path / "gen.yaml").write_text(GEN.format(data=data))
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(
        model="local-completions", tasks=["reasonrl_tiny_mc", "reasonrl_tiny_gen"],
        model_args=f"model=demo,base_url={served.url}/v1/completions,tokenizer_backend=huggingface,"
                   f"tokenizer={POLICY},num_concurrent=1,max_retries=1",
        task_manager=TaskManager(include_path=str(tmp_path)), log_samples=True, bootstrap_iters=0)
    assert set(out["results"]) == {"reasonrl_tiny_mc", "reasonrl_tiny_gen"}
    assert 0.0 <= out["results"]["reasonrl_tiny_mc"]["acc,none"] <= 1.0
    assert len(out["samples"]["reasonrl_tiny_gen"]) == len(DOCS)
    # the harness's log-likelihood of a continuation is the engine's sum of the prompt log-probs of the
    # continuation's tokens, as the harness tokenised them (with transformers' tokenizer of the checkpoint)
    from transformers import AutoTokenizer

    hf, ref = AutoTokenizer.from_pretrained(POLICY), LLMEngine.from_pretrained(POLICY, **ENGINE)
    for sample in out["samples"]["reasonrl_tiny_mc"][:2]:
        for (context, continuation), resp in zip(sample["arguments"], sample["resps"]):
            whole = hf.encode(context + continuation, add_special_tokens=False)
            ctxlen = len(hf.encode(context, add_special_tokens=False))
            ref.add_request("r", whole, SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0))
            expected = sum(ref.drain()["r"].prompt_logprobs[ctxlen:])
            assert math.isclose(resp[0][0], expected, abs_tol=1e-3), (context, continuation)
