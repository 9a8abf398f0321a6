import json
import random

import pytest
import torch

from reasonrl.bench.kv import KVBenchConfig, bench_kv, config_from_args, format_table, recall_model
from reasonrl.bench.recall import (BOS, SEP, RecallTask, TrainConfig, recall_items, recall_model_config,
                                   teacher_forced_accuracy, train_batch, train_recall)
from reasonrl.cli import main
from reasonrl.models.model import DecoderLM
from reasonrl.models.tiny import init_weights

TINY = RecallTask(pairs=6, num_keys=12, num_values=12, queries=4, min_pairs=2)
TINY_MODEL = dict(num_layers=2, hidden_size=32, num_heads=2, num_kv_heads=2, head_dim=16)


def test_recall_items_answer_the_query_and_repeat_by_seed():
    items = recall_items(TINY, 20, seed=3)
    assert [it.prompt_ids for it in items] == [it.prompt_ids for it in recall_items(TINY, 20, seed=3)]
    assert [it.prompt_ids for it in items] != [it.prompt_ids for it in recall_items(TINY, 20, seed=4)]
    assert items[0].prompt_ids != recall_items(TINY, 1, seed=3, split="calib")[0].prompt_ids
    for it in items:
        p = it.prompt_ids
        assert len(p) == TINY.prompt_len and p[0] == BOS and p[-2] == SEP
        pairs = [p[1 + 3 * i: 4 + 3 * i] for i in range(TINY.pairs)]
        keys = [k for k, *_ in pairs]
        assert len(set(keys)) == TINY.pairs and len({v for _, v, _ in pairs}) == TINY.pairs  # distinct keys, first values
        assert it.answer_ids == pairs[keys.index(p[-1])][1:]
    with pytest.raises(ValueError, match="num_keys"):
        RecallTask(pairs=20, num_keys=10)


def test_train_batch_labels_only_the_query_values():
    ids, labels = train_batch(TINY, random.Random(0), 4)
    assert ids.shape == labels.shape
    for row_ids, row_labels in zip(ids.tolist(), labels.tolist()):
        sep = row_ids.index(SEP)
        marked = [t for t, lab in enumerate(row_labels) if lab != -100]
        assert len(marked) == TINY.queries * TINY.value_len and min(marked) > sep
        assert all(row_labels[t] == row_ids[t + 1] for t in marked)  # label t is the token at t + 1
        context = {row_ids[1 + 3 * i]: row_ids[2 + 3 * i: 4 + 3 * i] for i in range((sep - 1) // 3)}
        for t in marked[::2]:  # each query key is followed by its value from the context
            assert row_ids[t + 1: t + 3] == context[row_ids[t]]


def test_a_short_training_run_beats_chance():
    task = RecallTask(pairs=2, num_keys=8, num_values=8, queries=6, min_pairs=2)
    torch.manual_seed(0)
    model = init_weights(DecoderLM(recall_model_config(task, **TINY_MODEL)), seed=0)
    items = recall_items(task, 128, seed=0)
    before = teacher_forced_accuracy(model, items)
    losses = train_recall(model, task, TrainConfig(steps=150, batch_size=32, lr=1e-2, warmup_steps=10, decay_fraction=0.5))
    after = teacher_forced_accuracy(model, items)
    chance = 1 / task.num_values ** 2  # two value tokens
    assert sum(losses[-10:]) < sum(losses[:10])
    assert after > max(10 * chance, before + 0.1), (before, after)  # ~0.4 after 150 steps


def tiny_bench_config(**kw) -> KVBenchConfig:
    return KVBenchConfig(items=6, task=TINY, train=TrainConfig(steps=3, batch_size=4), model=TINY_MODEL,
                         calib_items=4, budget=4, window=4, block_size=4, max_num_seqs=4, **kw)


def test_bench_kv_rows_are_well_formed(tmp_path):
    rows = bench_kv(tmp_path / "m", tiny_bench_config())
    assert [r["format"] for r in rows] == ["dense", "kivi", "tada", "tada", "tada", "spark", "spark"] + [
        "snapkv", "snapkv", "snapkv+spark", "snapkv+spark", "snapkv+spark", "snapkv+spark", "snapkv+spark"]
    assert [r["path"] for r in rows[7:]] == ["engine", "eviction harness"] * 3 + ["engine"]
    assert rows[13]["params"]["bits"] == 4 and rows[13]["bytes_per_token"] < rows[11]["bytes_per_token"]
    c = recall_model_config(TINY, **TINY_MODEL)
    dense16 = 2 * c.num_layers * c.num_kv_heads * c.head_dim * 2
    for r in rows:
        assert r["n"] == 6 and 0 <= r["accuracy"] <= 1
        assert r["bytes_per_token_ratio"] == pytest.approx(r["bytes_per_token"] / dense16)
    assert rows[0]["bytes_per_token_ratio"] == 1.0 and rows[0]["fixed_bytes"] == 0
    assert all(r["bytes_per_token_ratio"] < 1 for r in rows[1:])
    assert rows[2]["bytes_per_token"] < rows[3]["bytes_per_token"]  # TaDA 2 bits below 4 bits
    assert rows[1]["fixed_bytes"] > 0  # KIVI's staging pool, counted apart from the steady state
    assert rows[6]["bytes_per_token"] < rows[5]["bytes_per_token"]  # SPARK composed with 4-bit TaDA stores less
    for path in (rows[7:13:2], rows[8:13:2]):  # engine, harness: more pruning, fewer bytes
        assert path[2]["bytes_per_token"] < path[1]["bytes_per_token"] < path[0]["bytes_per_token"]
    assert (tmp_path / "m" / "kv_profiles" / "recall-avg3.json").is_file()
    assert sum(rows[4]["params"]["bits"]) / 2 <= 3
    assert all("target" in r for r in [rows[2]] + rows[11:13])
    assert not any("target" in r for r in [rows[5]] + rows[7:11] + rows[13:])
    assert "snapkv+spark" in format_table(rows)


def test_an_engine_that_preempts_is_refused_not_counted(tmp_path, monkeypatch):
    """A preempted sequence is evicted again when re-prefilled: kv_evicted_tokens would count its
    prompt twice and the eviction rows' bytes would come out too small."""
    import reasonrl.bench.kv as kv_bench
    from reasonrl.bench.recall import RecallItem

    cfg = tiny_bench_config()
    recall_model(tmp_path / "m", cfg)
    model = kv_bench.load_model(tmp_path / "m", None, torch.float32)
    items = [RecallItem(it.prompt_ids, (it.answer_ids * 10)[:20]) for it in recall_items(cfg.task, 6, cfg.seed)]
    real = kv_bench.dense_bytes
    monkeypatch.setattr(kv_bench, "dense_bytes", lambda m, tokens: real(m, 2 * 44))  # room for two sequences
    with pytest.raises(RuntimeError, match="preempted"):
        kv_bench.engine_accuracy(model, items, "dense", {}, cfg)


def test_model_shapes_are_presets_that_do_not_leak_into_each_other():
    wide = config_from_args(items=5, train_steps=7, seed=3, shape="32x128")
    assert (wide.model["num_kv_heads"], wide.model["head_dim"], wide.task.pairs) == (32, 128, 32)
    assert (wide.train.steps, wide.train.seed, wide.train.bf16, wide.items) == (7, 3, True, 5)
    again = config_from_args(shape="32x128")
    assert (again.train.steps, again.train.seed) == (600, 0)  # the preset itself was not changed
    assert config_from_args().model["num_kv_heads"] == 8 and not config_from_args().train.bf16
    with pytest.raises(ValueError, match="shape"):
        config_from_args(shape="4x4")


def test_recall_model_is_reused_only_when_the_config_matches(tmp_path):
    cfg = tiny_bench_config()
    recall_model(tmp_path, cfg)
    first = (tmp_path / "model.safetensors").stat().st_mtime_ns
    recall_model(tmp_path, cfg)
    assert (tmp_path / "model.safetensors").stat().st_mtime_ns == first
    changed = tiny_bench_config()
    changed.train.steps = 4
    recall_model(tmp_path, changed)  # trained for something else: retrained
    assert (tmp_path / "model.safetensors").stat().st_mtime_ns != first


@pytest.mark.slow
def test_bench_kv_cli_writes_a_list_of_rows(tmp_path, capsys):
    out = tmp_path / "kv.json"
    assert main(["bench", "kv", "--model-dir", str(tmp_path / "m"), "--items", "4", "--train-steps", "2",
                 "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert isinstance(rows, list) and len(rows) == 14
    for r in rows:
        assert {"format", "params", "bytes_per_token", "bytes_per_token_ratio", "accuracy", "n"} <= set(r)
    assert "accuracy" in capsys.readouterr().out  # the table


def test_bench_kv_cli_passes_its_flags_and_writes_the_rows(tmp_path, capsys, monkeypatch):
    import reasonrl.bench.kv as kv

    seen = {}

    def tiny_config(items, train_steps, seed, shape):  # the CLI's settings, on the tiny task and model
        seen.update(items=items, train_steps=train_steps, seed=seed, shape=shape)
        cfg = tiny_bench_config(seed=seed)
        cfg.items, cfg.train.steps = items, train_steps
        return cfg

    monkeypatch.setattr(kv, "config_from_args", tiny_config)
    out = tmp_path / "kv.json"
    assert main(["bench", "kv", "--model-dir", str(tmp_path / "m"), "--items", "3", "--train-steps", "2", "--seed", "5",
                 "--model-shape", "32x128", "--json", str(out)]) == 0
    assert seen == {"items": 3, "train_steps": 2, "seed": 5, "shape": "32x128"}
    rows = json.loads(out.read_text())
    assert len(rows) == 14 and all(r["n"] == 3 for r in rows)
    assert json.loads((tmp_path / "m" / "recall_task.json").read_text())["config"]["train"]["steps"] == 2
    assert "TaDA target" in capsys.readouterr().out  # the table and its summary


def test_no_target_is_met_against_a_baseline_that_scores_zero():
    """Dense at accuracy 0 lost nothing to lose: every target read "met"."""
    from reasonrl.bench.kv import check_targets, summary

    rows = [{"format": "dense", "path": "-", "params": {}, "accuracy": 0.0, "bytes_per_token": 100.0, "bytes_per_token_ratio": 1.0},
            {"format": "tada", "path": "-", "params": {"bits": 2}, "accuracy": 0.0, "bytes_per_token": 20.0, "bytes_per_token_ratio": 0.2},
            {"format": "snapkv", "path": "torch", "params": {}, "accuracy": 0.0, "bytes_per_token": 50.0, "bytes_per_token_ratio": 0.5},
            {"format": "snapkv+spark", "path": "torch", "params": {"key_ratio": 0.8}, "accuracy": 0.0, "bytes_per_token": 20.0,
             "bytes_per_token_ratio": 0.2}]
    check_targets(rows)
    assert rows[1]["target"]["met"] is None and rows[3]["target"]["met"] is None
    assert all("undetermined" in line and " met" not in line.replace("undetermined", "") for line in summary(rows))
