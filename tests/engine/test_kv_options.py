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
