import pytest

from reasonrl.engine import LLMEngine
from reasonrl.engine.config import EngineConfig
from reasonrl.models.model import DecoderLM
from reasonrl.models.tiny import init_weights, tiny_config


def test_unknown_kv_option_is_named_when_the_engine_starts():
    model = init_weights(DecoderLM(tiny_config(vocab_size=64)))
    with pytest.raises(ValueError, match="'dense' has no option.*bits"):
        LLMEngine(model, None, EngineConfig(kv_cache_memory=1 << 22, kv_options={"bits": 4}))


def test_kv_options_must_be_a_mapping():
    with pytest.raises(ValueError, match="kv_options"):
        EngineConfig(kv_options=["bits=4"])


def test_a_formats_fixed_buffers_come_out_of_the_kv_budget():
    from reasonrl.engine.kv.tada import TadaKV

    model = init_weights(DecoderLM(tiny_config(vocab_size=64)))
    budget = 1 << 22
    engine = LLMEngine(model, None, EngineConfig(kv_cache_memory=budget, kv_format="tada", max_num_seqs=32))
    assert TadaKV.fixed_bytes(model.config, 16, model.dtype, 32) > 0
    assert budget - engine.kv.bytes_per_block(model.config, 16, model.dtype) < engine.kv.allocated_bytes <= budget
