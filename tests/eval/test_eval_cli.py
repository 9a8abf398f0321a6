import json

from reasonrl.cli import main
from reasonrl.models.tiny import make_checkpoint, make_tokenizer


def test_reasonrl_eval_cli_on_a_local_checkpoint(tmp_path, capsys):
    tok = make_tokenizer(["Add: 1 + 2 \\boxed{3}"] * 10, vocab_size=280)
    ckpt = make_checkpoint(tmp_path / "m", "qwen3", tok, hidden_size=32, num_layers=1)
    out = tmp_path / "eval"
    argv = ["eval", "sums:", "--model", str(ckpt), "--out", str(out), "--limit", "3", "--n", "2",
            "--temperature", "1.0", "--max-tokens", "8", "--no-progress", "--kv-cache-memory", "8MiB"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["problems"] == 3 and summary["samples"] == 6 and summary["pass@1"] == 0.0
    assert len((out / "samples.jsonl").read_text().splitlines()) == 6
    assert main(argv) == 0  # resumed: nothing left to ask
    assert len((out / "samples.jsonl").read_text().splitlines()) == 6


def test_dead_endpoint_is_one_line(tmp_path, capsys):
    argv = ["eval", "sums:", "--model", "m", "--out", str(tmp_path / "e"), "--base-url", "http://127.0.0.1:9/v1",
            "--no-progress", "--retries", "0"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "127.0.0.1:9" in err[0]


def test_eval_with_a_draft_head_scores_exactly_as_without(tmp_path):
    """Greedy eval of the demo policy, with and without its draft: identical samples."""
    from pathlib import Path

    demo = Path(__file__).resolve().parents[2] / "reasonrl" / "demo"
    runs = {}
    for name, extra in (("plain", []), ("spec", ["--draft", str(demo / "draft")])):
        out = tmp_path / name
        argv = ["eval", "sums:", "--model", str(demo / "policy"), "--out", str(out), "--limit", "12",
                "--max-tokens", "64", "--no-progress", "--kv-cache-memory", "16MiB", "--max-model-len", "256", *extra]
        assert main(argv) == 0
        runs[name] = sorted((json.loads(line)["problem_id"], json.loads(line)["response"])
                            for line in (out / "samples.jsonl").read_text().splitlines())
    assert runs["plain"] == runs["spec"]
