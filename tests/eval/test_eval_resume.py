"""Resume: an interrupted eval, rerun, asks only for what it lacks and ends where an uninterrupted one does."""

import json
import threading
import zlib

import pytest
from eval_fake_server import FakeServer, problem_text

from reasonrl.envs.registry import load_environment
from reasonrl.eval import EndpointError, run_eval
from reasonrl.eval.store import SampleStore, read_samples

OPTIONS = dict(n=3, k=[1, 3], limit=8, temperature=1.0, progress=False, backoff=0.01, retries=1, concurrency=2)


class Flaky:
    """Answers right for about half of the seeds (so pass@1 and pass@3 are not trivial),
    until `cutoff` samples were served: then it is down (503) until revived."""

    def __init__(self, solutions, cutoff=None):
        self.solutions, self.cutoff, self.served = solutions, cutoff, 0
        self.lock = threading.Lock()

    def __call__(self, body, attempt):
        with self.lock:
            if self.cutoff is not None and self.served >= self.cutoff:
                return (503, "down for maintenance")
            self.served += 1
        label = self.solutions[problem_text(body)]
        return f"\\boxed{{{label}}}" if zlib.crc32(str(body["seed"]).encode()) % 2 else "\\boxed{?}"


@pytest.fixture(scope="module")
def prompts():
    return load_environment("ttt:all").prompts(8, seed=0, split="eval")


@pytest.fixture(scope="module")
def solutions(prompts):
    return {p.messages[-1]["content"]: p.answer[0] for p in prompts}


def keys(bodies):
    return {(problem_text(b), b["seed"]) for b in bodies}


def comparable(summary):
    return {k: v for k, v in summary.items() if k != "run"}


def test_interrupted_run_resumes_without_asking_again(prompts, solutions, tmp_path):
    text_of = {p.id: p.messages[-1]["content"] for p in prompts}
    whole = FakeServer(Flaky(solutions))
    try:
        reference = run_eval("ttt:all", model="fake", base_url=whole.url, out=tmp_path / "whole", **OPTIONS)
    finally:
        whole.stop()
    everything = keys(whole.requests)
    assert len(everything) == 24 and 0 < reference["pass@1"] < reference["pass@3"] < 1

    # The endpoint goes down after 7 samples, and comes back on another port: requests the first run
    # had cancelled may still land on the old server after it raised, so only the new one's count.
    down = FakeServer(Flaky(solutions, cutoff=7))
    out = tmp_path / "resumed"
    try:
        with pytest.raises(EndpointError, match="finished samples are saved in .*samples.jsonl; rerun"):
            run_eval("ttt:all", model="fake", base_url=down.url, out=out, **OPTIONS)
    finally:
        down.stop()
    kept = read_samples(out / "samples.jsonl")
    assert 0 < len(kept) < 24
    with open(out / "samples.jsonl", "ab") as f:  # killed while writing a row
        f.write(b'{"problem_id": "ttt/oTTT/1f", "sample": 2, "resp')
    back = FakeServer(Flaky(solutions))
    try:
        resumed = run_eval("ttt:all", model="fake", base_url=back.url, out=out, **OPTIONS)
    finally:
        back.stop()
    recorded = {(text_of[r["problem_id"]], r["seed"]) for r in kept}
    asked_again = [(problem_text(b), b["seed"]) for b in back.requests]
    assert len(recorded) == len(kept)
    assert sorted(asked_again) == sorted(everything - recorded)  # each missing sample once; nothing recorded
    assert resumed["run"] == {**resumed["run"], "asked": 24 - len(kept), "resumed": len(kept)}
    assert comparable(resumed) == comparable(reference)
    lines = (out / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 24 and all(json.loads(line) for line in lines)  # the torn row is gone


def test_a_larger_n_or_limit_extends_the_run(solutions, tmp_path):
    server = FakeServer(Flaky(solutions))
    try:
        run_eval("ttt:all", model="fake", base_url=server.url, out=tmp_path, **{**OPTIONS, "n": 1, "k": [1]})
        assert len(server.requests) == 8
        summary = run_eval("ttt:all", model="fake", base_url=server.url, out=tmp_path, **OPTIONS)
        assert len(server.requests) == 24 and summary["samples"] == 24  # samples 1 and 2 only were asked
        again = run_eval("ttt:all", model="fake", base_url=server.url, out=tmp_path, **OPTIONS)
        assert len(server.requests) == 24 and again["run"]["asked"] == 0  # complete: nothing to ask
        assert comparable(again) == comparable(summary)
        with pytest.raises(ValueError, match="other settings: temperature=0.5 \\(was 1.0\\)"):
            run_eval("ttt:all", model="fake", base_url=server.url, out=tmp_path, **{**OPTIONS, "temperature": 0.5})
    finally:
        server.stop()


def row(problem, sample, reward, response="r"):
    return {"problem_id": problem, "sample": sample, "response": response, "extracted": None, "reward": reward}


def test_store_drops_a_torn_last_line_and_keeps_the_latest_row(tmp_path):
    settings = {"benchmark": "x", "temperature": 1.0}
    with SampleStore(tmp_path, settings) as store:
        store.append([row("a", 0, 0.0), row("a", 1, 1.0)])
        store.append([row("a", 0, 1.0)])
    with open(tmp_path / "samples.jsonl", "ab") as f:
        f.write(b'{"problem_id": "b", "sam')
    with SampleStore(tmp_path, settings) as store:
        assert set(store.rows) == {("a", 0), ("a", 1)} and store.rows[("a", 0)]["reward"] == 1.0
        store.append([row("b", 0, 0.5, "\ud800 torn emoji \U0001f642")])
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert rows[-1] == row("b", 0, 0.5, "\ud800 torn emoji \U0001f642")
    assert len(rows) == 4
    # a row edited out of shape (no reward, a reward as text) is sampled again, not a KeyError at the summary
    lines = (tmp_path / "samples.jsonl").read_text().splitlines()
    broken = [{k: v for k, v in rows[1].items() if k != "reward"}, {**rows[2], "reward": "1.0"}]
    (tmp_path / "samples.jsonl").write_text("\n".join([lines[0], *map(json.dumps, broken), lines[3]]) + "\n")
    with SampleStore(tmp_path, settings) as store:
        assert set(store.rows) == {("a", 0), ("b", 0)}
    with pytest.raises(ValueError, match="other settings: temperature=0.0 \\(was 1.0\\)"):
        SampleStore(tmp_path, {**settings, "temperature": 0.0})


def test_samples_of_a_benchmark_file_changed_in_place_are_refused_not_mixed(tmp_path):
    """A file's ids are its line numbers: regenerated in place, its old samples were resumed as
    samples of the new problems (a perfect model's answers scored for another model's run)."""
    bench = tmp_path / "bench.jsonl"

    def write(pairs):
        bench.write_text("".join(json.dumps({"problem": f"What is {a}+{b}?", "answer": str(a + b)}) + "\n"
                                 for a, b in pairs))

    server = FakeServer(lambda body, attempt: "\\boxed{2}")
    try:
        write([(1, 1), (2, 2), (3, 3)])
        run_eval(f"math:{bench}", model="fake", base_url=server.url, out=tmp_path / "out", n=2, progress=False)
        asked = len(server.requests)
        write([(1, 1), (20, 20), (30, 30)])  # lines 2 and 3 are other problems now
        with pytest.raises(ValueError, match="other problems under the ids bench-2, bench-3 .*another output dir"):
            run_eval(f"math:{bench}", model="fake", base_url=server.url, out=tmp_path / "out", n=4, progress=False)
        assert len(server.requests) == asked

        # rows written before rows had fingerprints resume as they always did
        samples = tmp_path / "out" / "samples.jsonl"
        rows = [json.loads(line) for line in samples.read_text().splitlines()]
        samples.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "fingerprint"}) + "\n" for r in rows))
        summary = run_eval(f"math:{bench}", model="fake", base_url=server.url, out=tmp_path / "out", n=2,
                           progress=False)
        assert summary["run"]["resumed"] == 6 and len(server.requests) == asked
    finally:
        server.stop()


def test_a_damaged_run_json_or_a_file_not_in_utf8_is_an_error_naming_it(tmp_path):
    from reasonrl.eval.store import jsonl_lines

    settings = {"benchmark": "x"}
    with SampleStore(tmp_path, settings) as store:
        store.append([row("a", 0, 1.0)])
    (tmp_path / "run.json").write_text('{"benchmark": "x"')  # cut short
    with pytest.raises(ValueError, match=r"run\.json: not valid JSON"):
        SampleStore(tmp_path, settings)
    latin1 = tmp_path / "evals.jsonl"
    latin1.write_bytes(b'{"problem": "1+1"}\n{"problem": "Caf\xe9: 1+1"}\n')
    with pytest.raises(ValueError, match=r"evals\.jsonl:2: not UTF-8"):
        jsonl_lines(latin1)
