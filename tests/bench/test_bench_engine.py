import json

import pytest

from reasonrl.bench.engine import Workload, forward_flops, make_workload
from reasonrl.cli import main
from reasonrl.models.tiny import tiny_config


def test_bench_engine_cli_writes_the_promised_fields(tmp_path):
    out = tmp_path / "engine.json"
    assert main(["bench", "engine", "--preset", "tiny", "--num-prompts", "6", "--concurrency", "3",
                 "--median-tokens", "6", "--max-tokens", "12", "--repeats", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    for key in ("engine_tokens_per_s", "hf_tokens_per_s", "ratio", "flops_fraction_of_peak", "device",
                "fraction_of_roofline"):
        assert key in result
    assert result["ratio"] == result["hf_seconds"] / result["engine_seconds"]
    assert len(result["engine_seconds_per_repeat"]) == len(result["hf_seconds_per_repeat"]) == 2
    assert result["engine_seconds"] == sum(result["engine_seconds_per_repeat"]) / 2  # median of two
    assert 0 < result["flops_fraction_of_peak"] < 1.5


def test_workload_is_heavy_tailed_and_reproducible():
    a = make_workload(100, 400, (4, 8), 32, 1024, seed=1)
    b = make_workload(100, 400, (4, 8), 32, 1024, seed=1)
    assert a.prompts == b.prompts and a.targets == b.targets
    t = sorted(a.targets)
    assert t[len(t) * 99 // 100] > 5 * t[len(t) // 2]  # p99 several times the median


def test_forward_flops_counts_matmuls():
    cfg = tiny_config(vocab_size=10, hidden_size=8, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=16)
    # per token: q 8x8, k 8x4, v 8x4, o 8x8 = 192; mlp 3*8*16 = 384; lm head 8*10 = 80 -> 656 MACs
    # attention at context 3: 2 * heads 2 * dim 4 * 3 = 48 MACs
    assert forward_flops(cfg, 1, 3) == 2 * (656 + 48)
    assert isinstance(Workload([[1]], [2]).output_tokens, int)
    # the engine computes a prompt's logits at its last token only, and 2 tokens take one decode forward
    # (the first comes from the prefill): the LM head counted on every prompt token overstated FLOP/s 9-13%
    from reasonrl.bench.engine import workload_flops

    prefill = 2 * (3 * 576 + 80) + 2 * 3 * 2 * 2 * 4 * 1.5
    assert workload_flops(cfg, Workload([[1, 2, 3]], [2])) == prefill + forward_flops(cfg, 1, 4)


def test_the_batch1_probe_counts_the_tokens_it_generated(tmp_path):
    """With max_model_len too small for the 64-token probe, 63 tokens were divided by the time of 20."""
    from reasonrl.bench.engine import decode_roofline
    from reasonrl.engine import LLMEngine
    from reasonrl.engine.config import EngineConfig
    from reasonrl.models import load_model
    from reasonrl.models.tiny import make_checkpoint

    engine = LLMEngine(load_model(make_checkpoint(tmp_path / "m", "qwen2")), None,
                       EngineConfig(max_num_seqs=2, kv_cache_memory=1 << 22, block_size=4, max_model_len=24))
    out = decode_roofline(engine, tokens=64, repeats=1)
    assert out["batch1_decode_tokens"] == 24 - 4 - 1  # 20 generated from a 4-token prompt, the first by the prefill


def test_every_engine_repeat_prefills_its_prompts(tmp_path):
    """Repeats run the same prompts: a prefix cache kept between them would skip their prefill,
    which the transformers arm cannot do."""
    from reasonrl.bench.engine import run_engine
    from reasonrl.engine import LLMEngine
    from reasonrl.engine.config import EngineConfig
    from reasonrl.models import load_model
    from reasonrl.models.tiny import make_checkpoint

    engine = LLMEngine(load_model(make_checkpoint(tmp_path / "m", "qwen2")), None,
                       EngineConfig(max_num_seqs=4, kv_cache_memory=1 << 22, block_size=4))
    w = make_workload(engine.model.config.vocab_size, 4, (12, 16), 3, 4, seed=0)
    prefilled = []
    original = engine.block_manager.admit

    def admit(seq, *args):
        original(seq, *args)
        prefilled.append(seq.num_tokens - seq.num_cached)

    engine.block_manager.admit = admit
    run_engine(engine, w)
    first, prefilled[:] = list(prefilled), []
    run_engine(engine, w)
    assert prefilled == first and min(first) >= 12


@pytest.mark.parametrize("workload", ["engine", "april"])
def test_bench_rejects_zero_repeats_with_one_line(workload, capsys):
    assert main(["bench", workload, "--repeats", "0"]) == 2
    assert "repeats must be at least 1, got 0" in capsys.readouterr().err


def _bench_with_arm(tmp_path, monkeypatch, flag: str, seen) -> tuple[dict, list]:
    """`bench engine` on the tiny preset with one extra arm; `seen(engine)` is recorded for every
    engine run (warm-ups first, then one repeat of each arm)."""
    from reasonrl.bench import engine as bench

    records, original = [], bench.run_engine

    def run(engine, w):
        records.append(seen(engine))
        return original(engine, w)

    monkeypatch.setattr(bench, "run_engine", run)
    out = tmp_path / "engine.json"
    assert main(["bench", "engine", "--preset", "tiny", "--num-prompts", "4", "--concurrency", "2", "--median-tokens", "4",
                 "--max-tokens", "8", "--repeats", "1", "--skip-hf", flag, "--json", str(out)]) == 0
    return json.loads(out.read_text()), records


def test_the_plain_linear_arm_runs_on_its_own_copy_of_the_weights(tmp_path, monkeypatch):
    """The arm's engine must not share the measured engine's model: layout and class are the model's own."""
    from reasonrl.engine.weight_layout import SmallLinear, is_column_major

    def layout(engine):
        head = engine.model.lm_head
        return id(engine.model), is_column_major(head.weight) and isinstance(head, SmallLinear)

    result, layouts = _bench_with_arm(tmp_path, monkeypatch, "--plain-linear-arm", layout)
    assert result["speedup_over_plain_linear"] == result["plain_linear"]["engine_seconds"] / result["engine_seconds"]
    timed = layouts[-2:]  # one timed repeat of each arm
    assert [col for _, col in timed] == [True, False] and timed[0][0] != timed[1][0]


def test_the_gather_attention_arm_runs_without_the_cpu_kernel(tmp_path, monkeypatch):
    from reasonrl.kernels import cpu_ops

    if not cpu_ops.available():
        pytest.skip(f"kernel not built: {cpu_ops.status()}")
    result, kernels = _bench_with_arm(tmp_path, monkeypatch, "--gather-attention-arm", lambda engine: engine.kv.on_cpu_kernel)
    assert result["cpu_decode_kernel"] is True
    assert result["speedup_over_gather_attention"] == result["gather_attention"]["engine_seconds"] / result["engine_seconds"]
    assert kernels[-2:] == [True, False]  # one timed repeat of each arm, after the warm-ups


def test_the_split_linear_arm_runs_without_the_linear_kernel_on_its_own_model(tmp_path, monkeypatch):
    from reasonrl.kernels import cpu_ops

    if not cpu_ops.available():
        pytest.skip(f"kernels not built: {cpu_ops.status()}")
    result, arms = _bench_with_arm(tmp_path, monkeypatch, "--split-linear-arm",
                                   lambda engine: (id(engine.model), engine.stats()["cpu_linear_kernel"]))
    assert result["cpu_linear_kernel"] is True
    assert result["speedup_over_split_linear"] == \
        result["split_linear"]["engine_seconds"] / result["engine_seconds"]
    (model_on, on), (model_off, off) = arms[-2:]  # one timed repeat of each arm, after the warm-ups
    assert (on, off) == (True, False) and model_on != model_off


def test_the_python_forward_arm_runs_without_the_cpu_forward(tmp_path, monkeypatch):
    from reasonrl.engine.cpu_forward import CPUForward
    from reasonrl.kernels import cpu_ops

    if not cpu_ops.available():
        pytest.skip(f"kernels not built: {cpu_ops.status()}")
    result, fast = _bench_with_arm(tmp_path, monkeypatch, "--python-forward-arm",
                                   lambda engine: isinstance(engine.runner.fast, CPUForward))
    assert result["cpu_forward_kernel"] is True
    assert result["speedup_over_python_forward"] == result["python_forward"]["engine_seconds"] / result["engine_seconds"]
    assert fast[-2:] == [True, False]  # one timed repeat of each arm, after the warm-ups
    assert result["batch1_forward_ms"] > 0  # the roofline's forward alone, timed through the C++ forward
