"""`Completer`: a policy behind our engine that writes solutions, or continues them from a step.

Monte Carlo step labelling asks a completer for N continuations of every step prefix of a
solution. All of them go to one `LLMEngine` at once: one request per prefix with n = N (the N
samples share the prefix's KV blocks), and consecutive prefixes of one solution share their
common blocks through the prefix cache. Sample j of a request is drawn with `seed + j`, so a
labelling run is reproducible whatever the batching. A request whose prompt and prefix leave no
room in the engine's max_model_len (a solution cut at the context limit) is not run: it gets no
continuations, and `Cost.no_room` counts it. `Cost` counts what it took.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

from reasonrl.engine.llm_engine import LLMEngine
from reasonrl.engine.sampling_params import SamplingParams
from reasonrl.envs.base import Prompt
from reasonrl.models.chat import ChatEncoder, token_ids

ATTEMPTS = 3  # runs of a request the engine fails (a sample's step raised) before the labelling stops

@dataclass
class Cost:
    completions: int = 0
    """Sampled continuations (or solutions)."""
    prompt_tokens: int = 0
    """Prompt plus step-prefix tokens submitted."""
    cached_tokens: int = 0
    """Of those, tokens served from the prefix cache (not recomputed)."""
    generated_tokens: int = 0
    """Tokens sampled."""
    seconds: float = 0.0
    """Wall time."""
    no_room: int = 0
    """Requests not run: their prompt and prefix fill max_model_len (no continuations)."""

    def add(self, other: Cost) -> Cost:
        return Cost(*(getattr(self, f) + getattr(other, f) for f in self.__dataclass_fields__))


@dataclass
class Request:
    prompt: Prompt
    prefix: str = ""  # the response so far; the completer continues after it
    seed: int = 0
    texts: list[str] = field(default_factory=list)  # filled by `run`: the n continuations
    ended: list[bool] = field(default_factory=list)  # each continuation ended on its own (not cut at max_tokens)


class Completer:
    def __init__(self, engine: LLMEngine, n: int, temperature: float = 1.0, max_tokens: int = 128):
        if engine.tokenizer is None:
            raise ValueError("a completer needs a tokenizer (the checkpoint has no tokenizer.json)")
        self.engine, self.encoder = engine, ChatEncoder(engine.tokenizer, engine.model)
        self.n, self.temperature, self.max_tokens = n, temperature, max_tokens

    @classmethod
    def load(cls, path: str, n: int, temperature: float = 1.0, max_tokens: int = 128, device=None,
             **engine_kwargs) -> Completer:
        return cls(LLMEngine.from_pretrained(path, device=device, **engine_kwargs), n, temperature, max_tokens)

    def run(self, requests: Sequence[Request], n: int | None = None) -> Cost:
        """Fill each request's `texts` with n continuations of its prefix; returns the cost. A request
        leaving no room in max_model_len gets none (`texts` empty, counted in `no_room`). A request
        the engine fails (finish_reason "error", its partial texts no continuations) is run again,
        up to `ATTEMPTS` times in all, then a RuntimeError names it."""
        n = n or self.n
        start, cost = time.perf_counter(), Cost()
        inputs = {i: self._input(r) for i, r in enumerate(requests)}
        todo = {i: r for i, r in enumerate(requests) if len(inputs[i]) < self.engine.max_model_len}
        for i in inputs.keys() - todo.keys():  # the engine would refuse it: nothing to sample
            requests[i].texts, requests[i].ended = [], []
        cost.no_room = len(requests) - len(todo)
        for _ in range(ATTEMPTS):
            for i, r in todo.items():
                params = SamplingParams(n=n, temperature=self.temperature, max_tokens=self.max_tokens, seed=r.seed)
                self.engine.add_request(f"c{i}", inputs[i], params)
                cost.prompt_tokens += len(inputs[i])
            failed = {}
            for rid, out in self.engine.drain().items():
                i = int(rid[1:])
                cost.completions += len(out.outputs)
                cost.generated_tokens += sum(len(o.token_ids) for o in out.outputs)
                cost.cached_tokens += out.num_cached_tokens
                if any(o.finish_reason == "error" for o in out.outputs):
                    failed[i] = out.error
                else:
                    todo[i].texts = [o.text for o in out.outputs]
                    todo[i].ended = [o.finish_reason != "length" for o in out.outputs]
            todo = {i: todo[i] for i in failed}
            if not todo:
                break
        if todo:
            i, error = next(iter(failed.items()))
            raise RuntimeError(f"the engine failed {len(todo)} completion request(s) {ATTEMPTS} times, e.g. the "
                               f"continuation of {todo[i].prefix[-80:]!r}: {error}")
        cost.seconds = time.perf_counter() - start
        return cost

    def _input(self, r: Request) -> list[int]:
        ids = token_ids(self.encoder(r.prompt.messages))
        return ids + self.engine.tokenizer.encode(r.prefix, add_special_tokens=False) if r.prefix else ids


