"""Per-layer bit search for TaDA and its profile files."""

import json

import pytest
import torch

from reasonrl.engine import LLMEngine
from reasonrl.engine.config import EngineConfig
from reasonrl.engine.kv.calibrate import (KLScorer, SearchResult, greedy_search, load_profile, profile_path,
                                          random_search, save_profile, search_bits, uniform_bits)
from reasonrl.engine.kv.tada import TadaKV
from reasonrl.models.model import DecoderLM
from reasonrl.models.tiny import init_weights, tiny_config

LAYERS = 3


@pytest.fixture(scope="module")
def model():
    return init_weights(DecoderLM(tiny_config(vocab_size=128, num_layers=LAYERS)), std=0.2, seed=1)


@pytest.fixture(scope="module")
def scorer(model):
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(0, 128, (n,), generator=g).tolist() for n in (14, 17, 16)]
    return KLScorer(model, seqs, prompt_len=8, block_size=4)


def test_kl_grows_as_bits_fall(scorer):
    kl8, kl4, kl2 = (scorer([b] * LAYERS) for b in (8, 4, 2))
    assert kl8 < 1e-3 and kl8 < kl4 < kl2


@pytest.mark.parametrize("budget", [4, 5, 6])
def test_greedy_respects_the_budget_and_beats_uniform(scorer, budget):
    result = greedy_search(scorer, LAYERS, budget)
    assert result.method == "greedy" and len(result.bits) == LAYERS
    assert result.avg_bits == sum(result.bits) / LAYERS <= budget
    assert result.kl == scorer(result.bits) <= scorer(uniform_bits(LAYERS, budget))
    assert all(sum(c) / LAYERS <= budget for c, _ in result.trials)
    if budget == 6:  # uniform is 4 bits everywhere; spending the budget on some layers must help
        assert result.kl < scorer([4] * LAYERS) and max(result.bits) == 8


def test_random_search_respects_the_budget_and_is_seeded(scorer):
    a = random_search(scorer, LAYERS, 5, n_trials=6, seed=3)
    b = random_search(scorer, LAYERS, 5, n_trials=6, seed=3)
    assert a.bits == b.bits and [c for c, _ in a.trials] == [c for c, _ in b.trials]
    assert len(a.trials) == 7 and all(sum(c) / LAYERS <= 5 for c, _ in a.trials)
    assert a.kl == min(kl for _, kl in a.trials) <= scorer(uniform_bits(LAYERS, 5))


def test_search_bits_checks_its_arguments(model):
    seqs = [[1, 2, 3, 4, 5, 6]]
    with pytest.raises(ValueError, match="unknown search method 'beam'"):
        search_bits(model, seqs, 4, method="beam", prompt_len=3)
    with pytest.raises(ValueError, match="avg_bits=1.5 is below"):
        search_bits(model, seqs, 1.5, prompt_len=3)
    with pytest.raises(ValueError, match="prompt_len=6 must leave"):
        KLScorer(model, seqs, prompt_len=6)


def test_profile_round_trip_and_engine_option(tmp_path, model, scorer):
    result = greedy_search(scorer, LAYERS, 5)
    path = save_profile(tmp_path, "budget5", result)
    assert path == profile_path(tmp_path, "budget5") == tmp_path / "kv_profiles" / "budget5.json"
    data = json.loads(path.read_text())
    assert data == {"bits": result.bits, "avg_bits": result.avg_bits, "kl": result.kl, "method": "greedy",
                    "group_size": 16}  # the head size: the scorer's default group
    assert load_profile(tmp_path, "budget5") == result.bits
    engine = LLMEngine(model, None, EngineConfig(kv_cache_memory=1 << 23, kv_format="tada", max_num_seqs=8,
                                                 kv_options={"profile": str(path)}))
    assert engine.kv.bits == result.bits
    assert [t["k_codes"].shape[-1] for t in engine.kv.tensors] == [16 * b // 8 for b in result.bits]


def test_missing_profile_is_a_clear_error(tmp_path, model):
    save_profile(tmp_path, "other", SearchResult([4] * LAYERS, 4.0, 0.1, "greedy"))
    with pytest.raises(FileNotFoundError, match=r"no TaDA bit profile at .*nope\.json; profiles in .*: other"):
        load_profile(tmp_path, "nope")
    with pytest.raises(FileNotFoundError, match="no TaDA bit profile"):
        TadaKV(model.config, 4, 16, torch.device("cpu"), torch.float32, 2, profile=str(tmp_path / "missing.json"))
    (tmp_path / "kv_profiles" / "odd.json").write_text(json.dumps({"bits": [4.7] + [4] * (LAYERS - 1)}))
    with pytest.raises(ValueError, match="bits must be whole numbers, got 4.7"):  # read as 4 before
        load_profile(tmp_path, "odd")


def test_a_profile_is_loaded_by_name_next_to_the_checkpoint(tmp_path, tokenizer):
    from reasonrl.engine import LLM
    from reasonrl.engine.kv.calibrate import resolve_profile
    from reasonrl.models.tiny import make_checkpoint

    ckpt = make_checkpoint(tmp_path / "policy", "qwen2", tokenizer, hidden_size=32, num_layers=2)
    save_profile(ckpt, "mixed", SearchResult([8, 2], 5.0, 0.1, "greedy"))
    llm = LLM(str(ckpt), kv_format="tada", kv_options={"profile": "mixed"}, kv_cache_memory=1 << 22, max_num_seqs=4)
    assert llm.engine.kv.bits == [8, 2]
    assert resolve_profile(ckpt, "/elsewhere/p.json") == "/elsewhere/p.json"  # paths stay paths
    with pytest.raises(FileNotFoundError, match="profiles in .*: mixed"):
        LLM(str(ckpt), kv_format="tada", kv_options={"profile": "nope"}, kv_cache_memory=1 << 22, max_num_seqs=4)


def test_a_profile_keeps_the_group_its_bits_were_searched_with(tmp_path, model):
    """A profile searched with group_size 8 loaded into an engine quantising per head_dim channels, silently."""
    seqs = [list(range(3, 19)), list(range(40, 56))]
    path = save_profile(tmp_path, "g8", search_bits(model, seqs, 5, prompt_len=8, block_size=4, group_size=8))
    assert json.loads(path.read_text())["group_size"] == 8
    engine = LLMEngine(model, None, EngineConfig(kv_cache_memory=1 << 23, kv_format="tada", max_num_seqs=8,
                                                 kv_options={"profile": str(path)}))
    assert engine.kv.group_size == 8 and [t["k_scale"].shape[-1] for t in engine.kv.tensors] == [2] * LAYERS
    with pytest.raises(ValueError, match="option group_size 16, but profile .* was searched with group size 8"):
        LLMEngine(model, None, EngineConfig(kv_cache_memory=1 << 23, kv_format="tada", max_num_seqs=8,
                                            kv_options={"profile": str(path), "group_size": 16}))
    old = json.loads(path.read_text())
    del old["group_size"]
    path.write_text(json.dumps(old))  # a profile saved before the group was recorded: the option, or head_dim, as then
    for options, group in (({}, 16), ({"group_size": 8}, 8)):
        engine = LLMEngine(model, None, EngineConfig(kv_cache_memory=1 << 23, kv_format="tada", max_num_seqs=8,
                                                     kv_options={"profile": str(path), **options}))
        assert engine.kv.group_size == group


def test_a_training_run_finds_a_profile_named_next_to_its_policy(tmp_path, tokenizer):
    """`engine.kv_options.profile: mixed` worked in `reasonrl generate` and failed in `reasonrl train` on the same
    checkpoint ("no TaDA bit profile at mixed; profiles in .: none")."""
    from reasonrl.envs.letter import LetterEnvironment
    from reasonrl.models import Tokenizer, load_model
    from reasonrl.models.tiny import make_checkpoint
    from reasonrl.rl.config import load_config
    from reasonrl.rl.trainer import Trainer

    ckpt = make_checkpoint(tmp_path / "policy", "qwen2", tokenizer, hidden_size=32, num_layers=2)
    save_profile(ckpt, "mixed", SearchResult([8, 2], 5.0, 0.1, "greedy", group_size=8))
    cfg = load_config(None, {"model.path": str(ckpt), "train.run_dir": str(tmp_path / "run"), "env.name": "letter",
                             "engine.kv_cache_memory": 1 << 22, "engine.max_num_seqs": 8, "engine.kv_format": "tada",
                             "engine.kv_options": {"profile": "mixed"}})
    trainer = Trainer(cfg, LetterEnvironment(), load_model(ckpt), Tokenizer.from_dir(ckpt), console=False)
    try:
        assert trainer.backend.engine.kv.bits == [8, 2] and trainer.backend.engine.kv.group_size == 8
    finally:
        trainer.close()
    with pytest.raises(FileNotFoundError, match="a profile given by name is looked up in a checkpoint's kv_profiles/"):
        LLMEngine(load_model(ckpt), None, EngineConfig(kv_cache_memory=1 << 22, kv_format="tada",
                                                       kv_options={"profile": "mixed"}))
