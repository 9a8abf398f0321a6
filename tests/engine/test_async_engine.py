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


def test_timings_of_a_resumed_request_count_only_the_tokens_it_generated(ckpt):
    """Time per output token divided by the resumed tokens too (50x low for resume traffic), and a resume
    that generated nothing gave a time-to-first-token sample."""
    class Recorder:
        def __init__(self):
            self.first, self.done = [], []

        def first_token(self, seconds):
            self.first.append(seconds)

        def finished(self, out, seconds, first_token_seconds, new_tokens):
            self.done.append(new_tokens)

    async def main():
        seen = Recorder()
        engine = AsyncEngine(LLMEngine(load_model(ckpt, "cpu"), None, EngineConfig(kv_cache_memory=1 << 22, max_model_len=256)),
                             observer=seen)
        greedy = dict(temperature=0, ignore_eos=True)
        resume = {"output_ids": [5, 6, 7, 8, 9], "output_logprobs": [-1.0] * 5}
        try:
            async for _ in engine.generate("full", [1, 2, 3], SamplingParams(max_tokens=5, **greedy), **resume):
                pass
            assert seen.first == [] and seen.done == [0]  # it came back as it was: nothing generated
            async for _ in engine.generate("more", [1, 2, 3], SamplingParams(max_tokens=8, **greedy), **resume):
                pass
            assert len(seen.first) == 1 and seen.done == [0, 3]
        finally:
            engine.shutdown()

    asyncio.run(main())


def test_a_stream_nobody_reads_holds_one_output_per_request(ckpt):
    """Every step's output of a streamed request was queued until read, each a copy of all tokens so far:
    a client that stopped reading made the server hold memory quadratic in the output's length."""
    async def main():
        engine = AsyncEngine(LLMEngine(load_model(ckpt, "cpu"), None, EngineConfig(kv_cache_memory=1 << 22,
                                                                                     max_model_len=256)))
        try:
            stream = engine.new_stream()
            params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
            await engine.submit(stream, [("a", [1, 2, 3], params), ("b", [4, 5], params)], every_step=True)
            while engine.engine.has_unfinished() or engine.streams:  # the reader sleeps through it all
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            assert stream.queue.qsize() == 2
            outs = [await engine.next_output(stream) for _ in range(2)]
            assert sorted(o.request_id for o in outs) == ["a", "b"]
            assert all(o.finished and len(o.outputs[0].token_ids) == 40 for o in outs)
            # read as they come, every step's output arrives
            stream = engine.new_stream()
            await engine.submit(stream, [("c", [1, 2, 3], params)], every_step=True)
            seen = []
            while not seen or not seen[-1].finished:
                seen.append(await engine.next_output(stream))
            assert len(seen) > 1 and [len(o.outputs[0].token_ids) for o in seen] == sorted(
                len(o.outputs[0].token_ids) for o in seen)
        finally:
            engine.shutdown()

    asyncio.run(main())
