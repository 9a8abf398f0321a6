"""SnapKV token eviction inside `LLMEngine` (engine/eviction.py): the same tokens as the
one-sequence harness, real blocks given back, chunking, prefix sharing, preemption and resume."""

import pytest
import torch

from reasonrl.engine import LLMEngine, SamplingParams
from reasonrl.engine.config import EngineConfig
from reasonrl.engine.kv.snapkv import generate_with_eviction
from reasonrl.models import load_model

GREEDY = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)


def prompts(n, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(4, 256, (length + 3 * i,), generator=g).tolist() for i in range(n)]


def engine(model, **cfg):
    cfg = {"block_size": 8, "kv_cache_memory": 4 << 20, "evict_budget": 12, "evict_window": 8} | cfg
    return LLMEngine(model, None, EngineConfig(**cfg))


def run(eng, batch, params=GREEDY):
    for i, p in enumerate(batch):
        eng.add_request(str(i), p, params)
    done = eng.drain()
    return [done[str(i)].outputs[0].token_ids for i in range(len(batch))]


@pytest.fixture(scope="module")
def qwen2(hf_checkpoint):
    return load_model(hf_checkpoint("qwen2")[0], "cpu", torch.float32)


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_engine_eviction_is_token_identical_to_the_snapkv_harness(hf_checkpoint, family):
    model = load_model(hf_checkpoint(family)[0], "cpu", torch.float32)
    batch = prompts(4, 40)
    expected = [generate_with_eviction(model, p, 10, budget=12, window=8)[0] for p in batch]
    # every prompt chunked over several steps, the window split across chunks, decodes batched together
    assert run(engine(model, max_num_batched_tokens=24), batch) == expected
    assert run(engine(model), batch) == expected
    # and eviction matters: a full cache decodes otherwise for some prompt
    assert run(engine(model, evict_budget=None), batch) != expected


@pytest.mark.parametrize("length, budget", [(20, 12), (21, 12), (40, 0)])
def test_edges_of_the_budget_match_the_harness(qwen2, length, budget):
    """budget + window tokens exactly (kept whole), one more (one evicted), and a budget of 0."""
    prompt = prompts(1, length, seed=4)[0]
    eng = engine(qwen2, evict_budget=budget)
    assert run(eng, [prompt]) == [generate_with_eviction(qwen2, prompt, 10, budget=budget, window=8)[0]]
    assert eng.stats()["kv_evicted_tokens"] == max(0, length - budget - 8)


def test_evicted_blocks_go_back_and_the_prompt_stays_cached(qwen2):
    eng = engine(qwen2)
    prompt = prompts(1, 61)[0]  # 61 prompt tokens -> 12 + 8 = 20 entries: 3 blocks of 8 instead of 8
    eng.add_request("a", prompt, SamplingParams(temperature=0, max_tokens=30, ignore_eos=True))
    used = []
    while eng.has_unfinished():
        eng.step()
        used.append(eng.stats()["kv_blocks_used"])
    # after the first step the prompt's 8 blocks are let go (free, their contents still cached) and the
    # sequence holds 3 blocks of kept entries; at the end 20 kept + 28 generated entries = 6 blocks,
    # where the full cache would hold ceil((61 + 28) / 8) = 12
    assert used[0] == 3 and max(used) == 6 and used[-1] == 0
    stats = eng.stats()
    assert stats["evictions"] == 1 and stats["kv_evicted_tokens"] == 61 - 20
    # the full prompt blocks were never overwritten: a later request reuses them from the prefix cache,
    # computing at least the window again
    eng.add_request("b", prompt, GREEDY)
    out = eng.drain()["b"]
    assert out.num_cached_tokens == (61 - 8) // 8 * 8
    assert out.outputs[0].token_ids == generate_with_eviction(qwen2, prompt, 10, budget=12, window=8)[0]


def test_samples_sharing_a_prompt_and_short_prompts(qwen2):
    long, short = prompts(1, 45)[0], prompts(1, 15, seed=3)[0]  # 15 <= 12 + 8: kept whole
    eng = engine(qwen2)
    eng.add_request("g", long, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, n=3))
    eng.add_request("s", short, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
    done = eng.drain()
    expected = generate_with_eviction(qwen2, long, 6, budget=12, window=8)[0]
    assert [o.token_ids for o in done["g"].outputs] == [expected] * 3
    assert done["s"].outputs[0].token_ids == run(engine(qwen2, evict_budget=None), [short],
                                                  SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))[0]
    assert eng.stats()["evictions"] == 3


def test_preemption_and_resume_rebuild_the_same_cache(qwen2):
    batch = prompts(6, 40, seed=5)
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    expected = run(engine(qwen2), batch, params)
    # a cache of 16 blocks for 6 sequences that each need up to 7 before eviction and 6 after: preemption
    small = engine(qwen2, kv_cache_memory=16 * 8 * token_bytes(qwen2), max_model_len=80)
    assert run(small, batch, params) == expected
    assert small.stats()["preemptions"] > 0
    # abort after 7 tokens, resume with prompt + partial output: the resumed sequence is re-prefilled,
    # its prompt evicted before the earlier output is prefilled again
    eng = engine(qwen2)
    eng.add_request("r", batch[0], params)
    for _ in range(8):
        eng.step()
    partial = eng.abort("r").outputs[0]
    assert 0 < len(partial.token_ids) < 24
    eng.add_request("r", batch[0], params, output_ids=partial.token_ids, output_logprobs=partial.logprobs)
    assert eng.drain()["r"].outputs[0].token_ids == expected[0]


def token_bytes(model):
    c = model.config
    return 2 * c.num_layers * c.num_kv_heads * c.head_dim * model.dtype.itemsize


def harness_caches(model, prompt, key_ratio):
    """The one-sequence harness's per-layer caches after its prefill (budget 12, window 8, fp32)."""
    from reasonrl.engine.kv.snapkv import EvictingPrefill

    prefill = EvictingPrefill(12, 8, key_ratio, torch.float32)
    with torch.no_grad():
        model(torch.tensor(prompt), torch.arange(len(prompt)), prefill)
    return prefill.caches


@pytest.mark.parametrize("chunk", [None, 24])
def test_spark_with_eviction_keeps_what_the_harness_keeps(hf_checkpoint, chunk):
    """The kept entries are selected on, and pruned from, the exact prompt keys of the step that
    ends the prompt (SparK's setting), as the harness does; keys cached by earlier chunks of a
    chunked prefill are read back restored (pruned when their blocks filled) and pruned again."""
    from reasonrl.engine.kv.spark_ops import restore_keys

    path, _ = hf_checkpoint("qwen2", head_dim=64, hidden_size=256)
    model = load_model(path, "cpu", torch.float32)
    prompt = prompts(1, 64, seed=7)[0]
    eng = engine(model, kv_format="spark", kv_options={"key_ratio": 0.5}, max_num_seqs=8, kv_cache_memory=16 << 20,
                 **({"max_num_batched_tokens": chunk} if chunk else {}))
    eng.add_request("a", prompt, GREEDY)
    while not eng.evictor.num_evictions:  # prefill, then eviction
        eng.step()
    seq = eng.scheduler.running[0]
    assert seq.num_evicted == 64 - 20 and len(seq.block_table) == 3
    assert eng.kv.t["k_kept"].shape[-1] == 32  # half of the 64 key channels are stored
    exact, pruned = harness_caches(model, prompt, 0.0), harness_caches(model, prompt, 0.5)
    table = torch.tensor(seq.block_table)
    for layer in range(model.config.num_layers):
        stored_k, stored_v = (x.transpose(0, 1) for x in eng.kv.read_prefix(layer, table, 20))  # (Hkv, 20, D)
        p = pruned[layer]
        restored = restore_keys(p.pruned, p.qnorm[:, None], 64)
        if chunk and layer:  # later chunks attended pruned keys of earlier ones: other hidden states
            continue
        # the window (entries 12..19), computed in the last step whatever the chunking: values whole,
        # the last 4 entries staged whole
        torch.testing.assert_close(stored_v[:, 12:], exact[layer].v[:, 12:])
        torch.testing.assert_close(stored_k[:, 16:], exact[layer].k[:, 16:])
        if chunk is None:  # the kept tokens and their pruning with the window's |Q|: the harness's own
            torch.testing.assert_close(stored_v, exact[layer].v)
            torch.testing.assert_close(stored_k[:, :16], restored[:, :16], rtol=1e-3, atol=1e-3)
            assert (stored_k[:, :16] - exact[layer].k[:, :16]).abs().max() > 1e-2  # and pruning did change them
    out = eng.drain()["a"].outputs[0].token_ids
    assert len(out) == 10
    if chunk is None:  # the first token comes from the exact one-step prefill
        assert out[0] == run(engine(model), [prompt])[0][0]


def test_eviction_composes_with_spark_and_4_bit_codes(hf_checkpoint):
    path, _ = hf_checkpoint("qwen2", head_dim=64, hidden_size=256)
    model = load_model(path, "cpu", torch.float32)
    batch = prompts(2, 64, seed=8)
    spark = {"kv_format": "spark", "max_num_seqs": 8, "kv_cache_memory": 16 << 20}
    eng = engine(model, kv_options={"key_ratio": 0.8, "bits": 4}, **spark)
    out = run(eng, batch)
    assert [o[0] for o in out] == [o[0] for o in run(engine(model), batch)] and all(len(o) == 10 for o in out)
    assert eng.stats()["kv_evicted_tokens"] == sum(len(p) - 20 for p in batch)
    assert "k_codes" in eng.kv.t and "k_kept" not in eng.kv.t  # codes, never a full-precision copy


def test_a_full_cache_skips_the_eviction_instead_of_failing(qwen2):
    """Three samples share a 45-token prompt in 11 blocks: a sample's eviction frees only the blocks
    no sibling holds, so the kept entries may not fit; that sample keeps its whole prompt, and keeps
    it when it is re-prefilled after a preemption: every sample's tokens come from one cache, the
    evicted one or the whole one, never from the whole one and then the evicted one."""
    prompt = prompts(1, 45)[0]
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, n=3)
    eng = engine(qwen2, kv_cache_memory=11 * 8 * token_bytes(qwen2), max_model_len=80)
    eng.add_request("g", prompt, params)
    outs = [o.token_ids for o in eng.drain()["g"].outputs]
    stats = eng.stats()
    assert stats["evictions_skipped"] >= 1 and stats["evictions"] >= 1 and stats["preemptions"] >= 1
    evicted = generate_with_eviction(qwen2, prompt, 16, budget=12, window=8)[0]
    whole = run(engine(qwen2, evict_budget=None), [prompt], SamplingParams(temperature=0, max_tokens=16, ignore_eos=True))[0]
    assert evicted != whole
    assert evicted in outs and whole in outs and all(o in (evicted, whole) for o in outs)
    assert eng.block_manager.num_free == 11  # nothing leaked


def test_spark_restarts_the_query_statistic_from_the_window(hf_checkpoint):
    """Eviction lets go of the block the sequence's |Q| statistic followed; the statistic of the new
    last block (the window's entries, pruned when it fills) starts from the window queries."""
    path, _ = hf_checkpoint("qwen2", head_dim=64, hidden_size=256)
    model = load_model(path, "cpu", torch.float32)
    eng = engine(model, kv_format="spark", kv_options={"key_ratio": 0.5, "window": 32}, max_num_seqs=8,
                 kv_cache_memory=16 << 20)
    windows = {}
    write = eng.kv.write_entries
    eng.kv.write_entries = lambda layer, slots, k, v, q: (windows.__setitem__(layer, q), write(layer, slots, k, v, q))[1]
    eng.add_request("a", prompts(1, 64, seed=7)[0], GREEDY)
    eng.step()
    tail = eng.scheduler.running[0].block_table[-1]
    decay, c = 1 - 1 / 32, model.config
    for layer, q in windows.items():
        qbar = q.float().view(8, c.num_kv_heads, -1, c.head_dim).mean(2)
        expected = sum(decay ** (7 - i) * qbar[i].square() for i in range(8))
        torch.testing.assert_close(eng.kv.qstat[layer, eng.kv.stat_of[tail]], expected)


def test_eviction_options_are_checked(qwen2):
    with pytest.raises(ValueError, match="evict_budget"):
        EngineConfig(evict_budget=-1)
    with pytest.raises(ValueError, match="evict_window"):
        EngineConfig(evict_budget=8, evict_window=0)
    with pytest.raises(ValueError, match="evict_window"):  # checked even before eviction is turned on
        EngineConfig(evict_window=-1)
    with pytest.raises(ValueError, match="dense or spark"):
        engine(qwen2, kv_format="tada", kv_options={"bits": 4})
    with pytest.raises(ValueError, match="speculative"):
        EngineConfig(evict_budget=8, draft="some/draft")


def test_generate_cli_takes_the_eviction_flags(tmp_path, tokenizer, capsys, monkeypatch):
    from reasonrl.cli import main
    from reasonrl.engine import llm
    from reasonrl.models.tiny import make_checkpoint

    ckpt = make_checkpoint(tmp_path / "policy", "qwen2", tokenizer, hidden_size=64, num_layers=2)
    engines = []
    init = llm.LLMEngine.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        engines.append(self)

    monkeypatch.setattr(llm.LLMEngine, "__init__", spy)
    prompt = " ".join(["the quick brown fox jumps over the lazy dog"] * 6)
    assert main(["generate", "--model", str(ckpt), "--device", "cpu", "--max-model-len", "256", "--kv-cache-memory", "16MiB",
                 "--max-num-seqs", "4", "--kv-format", "spark", "--kv-option", "key_ratio=0.5", "--evict-budget", "8",
                 "--evict-window", "4", "--max-tokens", "4", prompt]) == 0
    assert "###" in capsys.readouterr().out
    cfg = engines[0].config
    assert (cfg.evict_budget, cfg.evict_window, cfg.kv_format) == (8, 4, "spark")
    assert engines[0].stats()["evictions"] == 1


@pytest.fixture(scope="module")
def llama_seed0(tmp_path_factory):
    """A tiny random llama built here with a fixed seed (the workload below was found on these weights)."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                   initializer_range=0.2, tie_word_embeddings=False)
    path = tmp_path_factory.mktemp("llama_seed0")
    transformers.LlamaForCausalLM(cfg).eval().save_pretrained(path)
    return load_model(path, "cpu", torch.float32)


def test_a_preempted_evicted_sample_is_evicted_again_even_when_its_prompt_blocks_are_shared(llama_seed0):
    """A sample evicted and decoding on its evicted cache is preempted; re-prefilled, its prompt's
    blocks come from the prefix cache, still held by siblings and by a request sharing the prefix,
    so its kept entries do not fit. It must not go on from its whole prompt (its later tokens would
    come from another cache than its earlier ones, neither run's output): it is prefilled again in
    blocks of its own and evicted. Every sample is the evicted run's, token for token (fp32)."""
    from reasonrl.engine.kv import get_format

    model, ev = llama_seed0, {"evict_budget": 6, "evict_window": 4}
    p9 = [72, 172, 139, 174, 93, 40, 101, 6, 99, 127, 74, 168, 211, 121, 180, 225, 157, 62, 146, 4, 173, 163, 29, 185,
          94, 52, 83, 73, 243, 207, 180]
    work = [  # (id, prompt, max_tokens, n, arrival step, prompt_logprobs, temperature), found by a fuzzer
        ("0", p9[:22] + [41, 254, 116, 98, 45, 90, 235, 57, 19], 37, 1, 0, 0, 0.9),
        ("3", [10, 60, 176, 113, 15, 103, 56, 201, 159, 30, 196, 144, 60, 49, 23, 182, 74, 13, 114, 74, 131, 92, 158,
               167, 189, 17, 135, 121, 98, 57, 90, 76, 120, 125], 31, 1, 1, 2, 0.9),
        ("4", [219, 26, 8, 239, 19, 213, 238, 173, 134, 61, 27, 112, 246, 117, 32, 173, 112, 252, 38, 142, 84, 229, 163,
               146, 45, 253, 182, 230, 17, 146, 47, 133, 212, 25, 106, 159, 111, 175, 156, 124, 126, 159, 102, 142, 11,
               168, 189, 25, 251, 53, 253], 33, 1, 1, None, 0.9),
        ("8", p9[:22] + [41, 254, 116, 98], 5, 3, 4, None, 0.9),
        ("9", p9, 22, 3, 1, 0, 0.0)]

    def params(max_tokens, n, plp, temperature, seed):
        return SamplingParams(temperature=temperature, max_tokens=max_tokens, ignore_eos=True, n=n, prompt_logprobs=plp,
                              seed=seed)

    def alone(**cfg):
        eng = LLMEngine(model, None, EngineConfig(block_size=8, kv_cache_memory=4 << 20, max_num_seqs=16, max_model_len=104,
                                                  enable_prefix_caching=False, **cfg))
        eng.add_request("9", p9, params(22, 3, 0, 0.0, 9))
        return [o.token_ids for o in eng.drain()["9"].outputs]

    evicted, whole = alone(**ev), alone()
    eng = LLMEngine(model, None, EngineConfig(block_size=8, max_num_seqs=8, max_num_batched_tokens=64, max_model_len=104,
                                              kv_cache_memory=14 * get_format("dense").bytes_per_block(model.config, 8, model.dtype),
                                              **ev))
    pending, step, out = sorted(work, key=lambda w: w[4]), 0, None
    while pending or eng.has_unfinished():
        while pending and pending[0][4] <= step:
            rid, prompt, max_tokens, n, _, plp, temperature = pending.pop(0)
            eng.add_request(rid, prompt, params(max_tokens, n, plp, temperature, int(rid)))
        for o in eng.step():
            if o.request_id == "9" and o.finished:
                out = [c.token_ids for c in o.outputs]
        step += 1
    assert evicted != whole
    assert out == evicted  # before the fix: samples 1 and 2 went on from their whole prompt after 6-7 tokens
    stats = eng.stats()
    assert stats["preemptions"] > 0 and stats["evictions_redone"] > 0 and stats["evictions_skipped"] == 0
    assert eng.block_manager.num_free == len(eng.block_manager.blocks)  # nothing leaked


def test_private_blocks_are_neither_served_nor_shared_by_the_prefix_cache():
    """A sequence eviction re-prefills in blocks of its own (`private_blocks`) holds only blocks
    with one reference: it takes no cached prefix and registers none for others."""
    from reasonrl.engine.block_manager import BlockManager
    from reasonrl.engine.sequence import Sequence

    blocks, prompt = BlockManager(8, 4), list(range(10, 22))  # 3 full blocks
    first = Sequence(0, "a", 0, prompt, GREEDY, 0)
    blocks.admit(first)
    blocks.append(first, len(prompt))
    first.num_computed = len(prompt)
    private = Sequence(1, "a", 1, prompt, GREEDY, 0)
    private.private_blocks = True
    blocks.admit(private)
    assert private.num_cached == 0 and not private.block_table
    blocks.append(private, len(prompt))
    private.num_computed = len(prompt)
    assert all(blocks.blocks[b].ref_count == 1 for b in first.block_table + private.block_table)
    assert not set(first.block_table) & set(private.block_table)
    assert blocks.can_compact(private, len(prompt))
    cached = list(first.block_table)
    blocks.release(first)  # its blocks stay cached; the private sequence's were never cached
    later = Sequence(2, "b", 0, prompt + [1], GREEDY, 0)
    blocks.admit(later)
    assert later.block_table == cached and later.num_cached == 12


def test_a_resumed_sample_whose_kept_entries_do_not_fit_is_prefilled_again_not_kept_whole(qwen2):
    """A resumed request's earlier tokens (past its first) were decoded on an evicted cache: when its
    kept entries do not fit at the re-prefill (forced here), it is prefilled again in blocks of its
    own and evicted, never continued on its whole prompt."""
    prompt = prompts(1, 40, seed=5)[0]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    expected = run(engine(qwen2), [prompt], params)[0]
    eng = engine(qwen2)
    eng.add_request("r", prompt, params)
    for _ in range(8):
        eng.step()
    partial = eng.abort("r").outputs[0]
    assert 1 < len(partial.token_ids) < 24
    real, calls = eng.block_manager.can_compact, []
    eng.block_manager.can_compact = lambda seq, n: bool(calls.append(seq.private_blocks)) or (seq.private_blocks and real(seq, n))
    eng.add_request("r", prompt, params, output_ids=partial.token_ids, output_logprobs=partial.logprobs)
    assert eng.drain()["r"].outputs[0].token_ids == expected
    stats = eng.stats()
    assert calls == [False, True] and stats["evictions_redone"] == 1 and stats["evictions_skipped"] == 0
    assert eng.block_manager.num_free == len(eng.block_manager.blocks)
