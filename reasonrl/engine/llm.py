"""`LLM`: offline batch generation, shaped like vLLM's.

    llm = LLM("path/to/checkpoint")
    outs = llm.generate(["2 + 2 ="], SamplingParams(temperature=0, max_tokens=8))
    outs[0].outputs[0].text
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from reasonrl.engine.config import EngineConfig
from reasonrl.engine.llm_engine import LLMEngine
from reasonrl.engine.sampling_params import SamplingParams
from reasonrl.engine.sequence import RequestOutput
from reasonrl.models.model import DecoderLM
from reasonrl.models.tokenizer import Tokenizer

Prompt = str | list[int]


class LLM:
    def __init__(self, model: str | Path | DecoderLM, tokenizer: Tokenizer | None = None, device=None, dtype=None,
                 **engine_kwargs):
        if isinstance(model, DecoderLM):
            self.engine = LLMEngine(model, tokenizer, EngineConfig.from_kwargs(**engine_kwargs))
        else:
            self.engine = LLMEngine.from_pretrained(model, device=device, dtype=dtype, **engine_kwargs)
            if tokenizer is not None:
                self.engine.tokenizer = tokenizer
        self._counter = 0

    @property
    def tokenizer(self) -> Tokenizer | None:
        return self.engine.tokenizer

    def generate(self, prompts: Prompt | list[Prompt], params: SamplingParams | list[SamplingParams] | None = None,
                 progress: bool = False) -> list[RequestOutput]:
        """Generate for every prompt (text or token ids); outputs come back in prompt order."""
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params = params or SamplingParams()
        params = params if isinstance(params, list) else [params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"got {len(params)} SamplingParams for {len(prompts)} prompts")
        ids = []
        for prompt, p in zip(prompts, params):
            rid = f"gen-{self._counter}"
            self._counter += 1
            self.engine.add_request(rid, self._encode(prompt), p)
            ids.append(rid)
        done: dict[str, RequestOutput] = {}
        start = time.perf_counter()
        while len(done) < len(ids):
            for out in self.engine.step():
                if out.finished:
                    done[out.request_id] = out
            if progress:
                _progress(len(done), len(ids), self.engine.num_generated_tokens, time.perf_counter() - start)
        if progress:
            print(file=sys.stderr)
        return [done[rid] for rid in ids]

    def chat(self, conversations: list[dict] | list[list[dict]], params: SamplingParams | None = None,
             **template_kwargs) -> list[RequestOutput]:
        """Generate replies to chat conversations, rendered with the checkpoint's chat template."""
        if conversations and isinstance(conversations[0], dict):
            conversations = [conversations]
        tok = self._require_tokenizer()
        prompts = [tok.apply_chat_template(c, add_generation_prompt=True, **template_kwargs) for c in conversations]
        return self.generate(prompts, params)

    def _encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            return self._require_tokenizer().encode(prompt)
        return list(prompt)

    def _require_tokenizer(self) -> Tokenizer:
        if self.engine.tokenizer is None:
            raise ValueError("text prompts need a tokenizer: the checkpoint has no tokenizer.json; pass token ids")
        return self.engine.tokenizer


def _progress(done: int, total: int, tokens: int, seconds: float) -> None:
    rate = tokens / seconds if seconds > 0 else 0.0
    print(f"\r  {done}/{total} requests  {tokens} tokens  {rate:,.0f} tok/s", end="", file=sys.stderr, flush=True)
