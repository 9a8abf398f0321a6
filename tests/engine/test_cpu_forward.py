"""The model's forward in one C++ call on CPU (engine/cpu_forward.py, `EngineConfig.cpu_forward_kernel`):
the same decoding and prompt log-probs as the PyTorch forward for every model family, short prompt
chunks prefilled through it (after cached blocks too), draft trees verified through it, weights
read in place, a row independent of its batch, and the steps and inputs it leaves alone."""

import pytest
import torch

from reasonrl.engine import LLMEngine, SamplingParams
from reasonrl.engine.config import EngineConfig
from reasonrl.engine.cpu_forward import MAX_PROMPT_WORK, MAX_ROWS, CPUForward
from reasonrl.engine.spec.draft import DraftHead
from reasonrl.kernels import cpu_ops
from reasonrl.models.model import DecoderLM
from reasonrl.models.tiny import init_weights, tiny_config

pytestmark = pytest.mark.skipif(not cpu_ops.available(), reason=f"kernels not built: {cpu_ops.status()}")


def _model(family: str, seed: int = 1) -> DecoderLM:
    model = init_weights(DecoderLM(tiny_config(family, vocab_size=64, hidden_size=64, num_layers=3, eos_token_ids=(1,))),
                         std=0.2, seed=seed)
    for p in model.parameters():  # nonzero biases and norms: a kernel that skipped one would differ
        if p.dim() == 1:
            p.data.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.1)
    return model


def _engine(model, draft=None, **kw):
    kw.setdefault("draft_adaptive", False)
    return LLMEngine(model, None, EngineConfig(max_num_seqs=4, max_model_len=128, kv_cache_memory=1 << 22,
                                               block_size=4, **kw), draft=draft)


def _run(engine, prompts, max_tokens=24, outputs=False, **params):
    for i, p in enumerate(prompts):
        engine.add_request(str(i), p, SamplingParams(temperature=0, max_tokens=max_tokens, logprobs=1, **params))
    done = engine.drain()
    return done if outputs else {rid: o.outputs[0] for rid, o in done.items()}


PROMPTS = [[3, 4, 5, 6, 7], [9, 10], list(range(11, 40)), [5] * 9, [20, 21, 22]]
LONG = [2 + (7 * i) % 60 for i in range(MAX_ROWS + 6)]  # one prompt chunk longer than the kernel takes


def _record_steps(monkeypatch, engine, chunks: list | None = None) -> list[tuple[int, int, bool]]:
    """(trees, most rows of a sequence, taken by the kernel) of every step the engine runs from now;
    `chunks` gets (prompt chunks as (rows, context length), taken) of every step."""
    steps, forward = [], engine.runner.fast.forward

    def recorded(ids, positions, meta, inputs):
        out = forward(ids, positions, meta, inputs)
        masks = meta.masks or [None] * meta.num_seqs
        steps.append((sum(m is not None for m in masks), max(map(meta.q_len, range(meta.num_seqs))), out is not None))
        if chunks is not None:
            chunks.append(([(meta.q_len(b), meta.context_lens[b]) for b, m in enumerate(masks)
                            if m is None and meta.q_len(b) > 1], out is not None))
        return out

    monkeypatch.setattr(engine.runner.fast, "forward", recorded)
    return steps


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "llama"])
def test_decoding_and_prompt_logprobs_match_the_pytorch_forward(family, monkeypatch):
    model = _model(family)
    on, off = _engine(model), _engine(model, cpu_forward_kernel=False)
    assert isinstance(on.runner.fast, CPUForward) and off.runner.fast is None
    steps = _record_steps(monkeypatch, on)
    prompts = [*PROMPTS, LONG]
    # 6 requests, 4 in flight: continuous batching, prompts prefilled next to decode rows; the second
    # pass (without prompt log-probs, which compute every prompt row) finds the prompts' full blocks
    # in the prefix cache, so its chunks attend cached context
    for params in ({"prompt_logprobs": 1}, {}):
        a, b = (_run(e, prompts, outputs=True, **params) for e in (on, off))
        for rid in b:
            x, y = a[rid], b[rid]
            assert x.outputs[0].token_ids == y.outputs[0].token_ids, rid
            torch.testing.assert_close(torch.tensor(x.outputs[0].logprobs), torch.tensor(y.outputs[0].logprobs),
                                       atol=1e-4, rtol=0)
            assert x.num_cached_tokens == y.num_cached_tokens
            if params:
                torch.testing.assert_close(torch.tensor(x.prompt_logprobs[1:]), torch.tensor(y.prompt_logprobs[1:]),
                                           atol=1e-4, rtol=0)
    assert sum(o.num_cached_tokens > 0 for o in a.values()) >= 4
    # every step ran through the kernel but the one carrying the long prompt's chunk (in the first
    # pass: in the second, most of it came from the cache)
    assert all(taken == (rows <= MAX_ROWS) for _, rows, taken in steps)
    assert sum(not taken for *_, taken in steps) == 1 and sum(1 < rows <= MAX_ROWS for _, rows, _ in steps) >= 2


def test_draft_trees_are_verified_through_it_losslessly(monkeypatch):
    model = _model("qwen2")
    draft = init_weights(DraftHead(model), std=0.3, seed=2)
    prompts = [*PROMPTS, LONG]
    plain = _run(_engine(model, cpu_forward_kernel=False), prompts, 32)
    spec = _engine(model, draft, draft_top_k=3, draft_depth=4, draft_tokens=10)
    chunks = []
    steps = _record_steps(monkeypatch, spec, chunks)
    got = _run(spec, prompts, 32)
    assert {r: o.token_ids for r, o in got.items()} == {r: o.token_ids for r, o in plain.items()}
    assert spec.stats()["spec_rounds"] > 10
    # every step verified its trees through the C++ forward, next to prompt chunks too, but the
    # step that carried the long prompt's chunk
    assert any(trees and prompt and taken for (trees, _, taken), (prompt, _) in zip(steps, chunks))
    assert all(taken == (rows <= MAX_ROWS) for _, rows, taken in steps) and not all(taken for *_, taken in steps)


def test_a_short_chunk_after_a_long_prefix_keeps_sdpa(monkeypatch):
    """A chunked prompt: its chunks run through the kernel while rows x context stays within
    MAX_PROMPT_WORK (the kernel's attention is a loop over each row's whole context), the later ones
    through PyTorch; the output is the PyTorch forward's."""
    model = _model("qwen2")
    kw = dict(max_model_len=400, max_num_batched_tokens=48, kv_cache_memory=1 << 23)
    on = LLMEngine(model, None, EngineConfig(max_num_seqs=2, block_size=4, **kw))
    off = LLMEngine(model, None, EngineConfig(max_num_seqs=2, block_size=4, cpu_forward_kernel=False, **kw))
    chunks = []
    _record_steps(monkeypatch, on, chunks)
    prompt = [2 + (5 * i) % 60 for i in range(300)]
    a, b = _run(on, [prompt], 8), _run(off, [prompt], 8)
    assert a["0"].token_ids == b["0"].token_ids
    seen = [(rows * ctx, taken) for prompt_chunks, taken in chunks for rows, ctx in prompt_chunks]
    assert len(seen) >= 6 and all(taken == (work <= MAX_PROMPT_WORK) for work, taken in seen)
    assert any(taken for _, taken in seen) and not all(taken for _, taken in seen)


def test_a_rows_hidden_state_does_not_depend_on_the_other_rows():
    model = _model("llama")
    engine = _engine(model)
    fwd = engine.runner.fast
    cache = engine.kv.cache
    cache.normal_()  # any context: the rows attend whatever the slots hold
    cfg = model.config
    tables = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 8]], dtype=torch.int32)
    ids, pos, slots = torch.tensor([5, 9, 13]), torch.tensor([6, 10, 2]), torch.tensor([6, 4 * 3 + 10, 4 * 6 + 2])
    masks = [torch.empty(0, dtype=torch.bool)] * 3
    together = cpu_ops.decoder_forward_cpu(fwd.weights, cfg, ids, pos, cache, slots, tables, [0, 1, 2, 3], [7, 11, 3], masks)
    for b in range(3):
        alone = cpu_ops.decoder_forward_cpu(fwd.weights, cfg, ids[b: b + 1], pos[b: b + 1], cache, slots[b: b + 1],
                                            tables[b: b + 1], [0, 1], [[7, 11, 3][b]], masks[:1])
        assert torch.equal(alone[0], together[b])


def test_weights_updated_in_place_are_read():
    model = _model("qwen2")
    on, off = _engine(model), _engine(model, cpu_forward_kernel=False)
    before = _run(on, PROMPTS[:2])
    with torch.no_grad():
        model.layers[1].mlp.down_proj.weight.mul_(-3)  # as load_weights or a colocated trainer's step does
    on.reset_prefix_cache()  # the cached prompt blocks hold the old weights' keys (a weight sync resets them too)
    a, b = _run(on, PROMPTS[:2]), _run(off, PROMPTS[:2])
    assert {r: o.token_ids for r, o in a.items()} == {r: o.token_ids for r, o in b.items()}
    assert any(a[r].token_ids != before[r].token_ids for r in a)


def test_what_it_leaves_to_the_pytorch_forward():
    assert CPUForward.build(_model("qwen2").double(), None, EngineConfig()) is None  # float64
    compiled = _engine(_model("qwen2"), compile_decode=True, max_decode_bucket=1)
    assert not isinstance(compiled.runner.fast, CPUForward)  # compiled decode, asked for, comes first
    fmt = _engine(_model("qwen2"), kv_format="kivi")
    assert fmt.runner.fast is None  # another KV format


def test_bad_inputs_are_refused_by_name():
    model = _model("qwen2")
    engine = _engine(model)
    fwd, cfg, cache = engine.runner.fast, model.config, engine.kv.cache
    ids, tables = torch.tensor([5, 6]), torch.tensor([[0, 1]], dtype=torch.int32)
    with pytest.raises(RuntimeError, match="sequence 0's mask must be bool"):
        cpu_ops.decoder_forward_cpu(fwd.weights, cfg, ids, ids, cache, ids, tables, [0, 2], [4], [torch.ones(3, 3, dtype=torch.bool)])
    with pytest.raises(RuntimeError, match="sequence 0 lists block"):
        cpu_ops.decoder_forward_cpu(fwd.weights, cfg, ids, ids, cache, ids, torch.tensor([[0, 10 ** 6]], dtype=torch.int32),
                                    [0, 2], [8], [torch.empty(0, dtype=torch.bool)])
    with pytest.raises(RuntimeError, match="token id 999"):
        cpu_ops.decoder_forward_cpu(fwd.weights, cfg, torch.tensor([5, 999]), ids, cache, ids, tables, [0, 2], [4],
                                    [torch.empty(0, dtype=torch.bool)])
    with pytest.raises(RuntimeError, match="2 sequences need 3 row offsets"):
        cpu_ops.decoder_forward_cpu(fwd.weights, cfg, ids, ids, cache, ids, tables.repeat(2, 1), [0, 2], [4, 4],
                                    [torch.empty(0, dtype=torch.bool)] * 2)
