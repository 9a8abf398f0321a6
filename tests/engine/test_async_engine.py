"""AsyncEngine's end: shutting it down releases every caller still waiting on it."""

import asyncio

import pytest

from reasonrl.engine import LLMEngine, SamplingParams
from reasonrl.engine.async_engine import AsyncEngine, EngineUnavailable
from reasonrl.engine.config import EngineConfig
from reasonrl.models import load_model
from reasonrl.models.tiny import make_checkpoint, make_tokenizer


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    tok = make_tokenizer(["one two three four five six seven"] * 20, vocab_size=280)
    return make_checkpoint(tmp_path_factory.mktemp("async") / "m", "qwen2", tok, std=0.2, hidden_size=64,
                           num_layers=2, max_position_embeddings=20_000)


def test_shutdown_fails_the_requests_in_flight_instead_of_hanging_them(ckpt):
    async def main():
        engine = AsyncEngine(LLMEngine(load_model(ckpt, "cpu"), None, EngineConfig(kv_cache_memory=1 << 24,
                                                                                     block_size=16)))
        long = engine.generate("r", [1, 2, 3], SamplingParams(temperature=0, max_tokens=19_000, ignore_eos=True))
        waiting = asyncio.ensure_future(long.__anext__())
        await asyncio.sleep(0.3)
        await asyncio.get_running_loop().run_in_executor(None, engine.shutdown)
        with pytest.raises(EngineUnavailable, match="shut down"):
            await asyncio.wait_for(waiting, timeout=30)  # it waited for ever
        with pytest.raises(EngineUnavailable, match="shut down"):
            await asyncio.wait_for(engine.stats(), timeout=30)
        assert engine.health() == (False, "the engine was shut down")

    asyncio.run(main())
