"""`reasonrl eval` on a local tiny checkpoint through the in-process engine."""

import json

import pytest
from eval_fake_server import ServerThread

from reasonrl.envs.registry import load_environment
from reasonrl.eval import run_eval
from reasonrl.models.tiny import make_checkpoint, make_tokenizer

ENGINE = {"kv_cache_memory": 1 << 23, "max_model_len": 1024, "block_size": 16}
OPTIONS = dict(limit=4, temperature=1.0, max_tokens=8, seed=3, progress=False, engine_kwargs=ENGINE)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    prompts = load_environment("ttt:all").prompts(4, seed=0, split="eval")
    corpus = [m["content"] for p in prompts for m in p.messages] * 4 + ["\\boxed{E} play at C. Answer: B"] * 4
    tok = make_tokenizer(corpus, vocab_size=1000)  # ~650 after merges run out: short prompts, fast prefill
    return make_checkpoint(tmp_path_factory.mktemp("eval") / "tiny", "qwen2", tok, hidden_size=64, num_layers=2,
                           max_position_embeddings=1024, std=0.2)


def rows_by_key(out):
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    return {(r["problem_id"], r["sample"]): r for r in rows}


def test_local_checkpoint_end_to_end(checkpoint, tmp_path):
    summary = run_eval("ttt:all", model=str(checkpoint), out=tmp_path / "a", n=2, **OPTIONS)
    rows = rows_by_key(tmp_path / "a")
    assert len(rows) == 8 and {s for _, s in rows} == {0, 1}
    for row in rows.values():
        assert set(row) == {"problem_id", "sample", "seed", "response", "extracted", "reward", "tokens",
                            "finish_reason", "fingerprint"}
        assert isinstance(row["response"], str) and 1 <= row["tokens"] <= 8
        assert row["finish_reason"] in ("stop", "length") and row["reward"] in (0.0, 1.0)
    assert summary["problems"] == 4 and summary["samples"] == 8 and summary["complete"]
    assert 0 <= summary["pass@1"] <= summary["pass@2"] <= 1
    assert isinstance(summary["parse_failure_rate"], float)  # TTT implements extract
    tokens = [r["tokens"] for r in rows.values()]
    assert summary["response_length"] == {"mean": sum(tokens) / 8, "unit": "tokens"}
    assert set(summary["subsets"]["game"]) == {"oTTT", "dTTT", "cTTT", "sTTT"}
    assert summary["run"]["endpoint"] == "local"
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["samples"] == 8
    assert (tmp_path / "a" / "summary.md").read_text().startswith("# ttt:all")

    # per-sample seeds: asking sample 0 first and sample 1 in a second (resumed) run gives the same samples
    run_eval("ttt:all", model=str(checkpoint), out=tmp_path / "b", n=1, **OPTIONS)
    assert len(rows_by_key(tmp_path / "b")) == 4
    resumed = run_eval("ttt:all", model=str(checkpoint), out=tmp_path / "b", n=2, **OPTIONS)
    assert resumed["run"]["asked"] == 4 and rows_by_key(tmp_path / "b") == rows
    assert len({r["response"] for r in rows.values()}) > 4  # sampling at temperature 1: not all the same


def test_local_greedy_samples_agree(checkpoint, tmp_path):
    run_eval("ttt:oTTT", model=str(checkpoint), out=tmp_path, n=2, **{**OPTIONS, "temperature": 0.0, "limit": 2})
    rows = rows_by_key(tmp_path)
    for pid in {p for p, _ in rows}:
        assert rows[(pid, 0)]["response"] == rows[(pid, 1)]["response"]


def test_reasonrl_serve_gives_the_local_samples(checkpoint, tmp_path):
    """The same seeds through `reasonrl serve` (one n=1 request per sample) and in-process (one request
    per problem with n=2): the same samples, token counts and finish reasons."""
    from reasonrl.engine import LLMEngine
    from reasonrl.engine.server import ServeConfig, create_app

    options = {**OPTIONS, "limit": 2}
    run_eval("ttt:all", model=str(checkpoint), out=tmp_path / "local", n=2, **options)
    app = create_app(LLMEngine.from_pretrained(checkpoint, **ENGINE), ServeConfig(served_model_name="tiny"))
    server = ServerThread(app)
    try:
        summary = run_eval("ttt:all", model="tiny", base_url=server.url, out=tmp_path / "served", n=2, **options)
    finally:
        server.stop()
    assert summary["response_length"]["unit"] == "tokens"
    assert rows_by_key(tmp_path / "served") == rows_by_key(tmp_path / "local")


def test_a_sample_the_engine_fails_is_not_recorded_and_a_rerun_asks_again(checkpoint, tmp_path, monkeypatch):
    """Step isolation ends one request with finish_reason "error" and partial text: that is no
    answer. It was stored as a finished sample with reward 0 and the run called complete."""
    from reasonrl.engine.llm_engine import LLMEngine
    from reasonrl.eval.harness import IncompleteEval

    load = LLMEngine.from_pretrained.__func__

    def faulty_engine(cls, *args, **kwargs):
        engine = load(cls, *args, **kwargs)
        sampling = engine.runner.sampling_batch

        def sampling_batch(seqs):
            if any(s.request_id == "eval-1" and len(s.output_ids) == 2 for s in seqs):
                raise RuntimeError("injected fault")
            return sampling(seqs)

        engine.runner.sampling_batch = sampling_batch
        return engine

    with monkeypatch.context() as m:
        m.setattr(LLMEngine, "from_pretrained", classmethod(faulty_engine))
        with pytest.raises(IncompleteEval, match="injected fault.*rerun the same command to ask only for the missing"):
            run_eval("ttt:all", model=str(checkpoint), out=tmp_path / "a", n=2, **OPTIONS)
    rows = rows_by_key(tmp_path / "a")
    assert len(rows) == 6 and all(r["finish_reason"] != "error" for r in rows.values())
    summary = run_eval("ttt:all", model=str(checkpoint), out=tmp_path / "a", n=2, **OPTIONS)
    assert summary["complete"] and summary["samples"] == 8 and summary["run"]["asked"] == 2


def test_a_prompt_the_engine_refuses_is_not_worth_a_rerun(checkpoint, tmp_path):
    """It told the user to rerun the same command, which failed the same way every time."""
    from reasonrl.eval.harness import IncompleteEval

    with pytest.raises(IncompleteEval, match="leaves no room.*a rerun with the same settings fails the same way") as info:
        run_eval("ttt:all", model=str(checkpoint), out=tmp_path / "a", **{**OPTIONS, "engine_kwargs": {
            **OPTIONS.get("engine_kwargs", {}), "max_model_len": 16}})
    assert "rerun the same command" not in str(info.value)


def test_a_stopped_runs_summary_says_it_was_stopped(checkpoint, tmp_path):
    """It said "0 samples failed and are not counted; rerun to retry them" for a run the user stopped."""
    run_eval("ttt:all", model=str(checkpoint), out=tmp_path / "a", n=2, stop=lambda: True, **OPTIONS)
    text = (tmp_path / "a" / "summary.md").read_text()
    assert "**Incomplete:** the run was stopped before every sample finished" in text and "0 samples failed" not in text
