"""The agent's model: a batch of calls in, one reply per call out.

`EndpointLLM` sends them to any OpenAI-compatible endpoint through reasonrl's eval client
(concurrency, retries with backoff, timeouts; eval/client.py). A call that still fails after
its retries is a `Reply` with an `error`, not an exception: the loop treats it as an answer
without code. Only a dead endpoint (`EndpointError`) stops the run; the log keeps what was done
and a rerun resumes. Tests use `ScriptedLLM`-style doubles with the same `complete` method.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from reasonrl.envs.base import Prompt
from reasonrl.eval.client import ClientConfig, OpenAIClient
from reasonrl.eval.jobs import Completion, Job

from .config import AgentConfig


@dataclass(frozen=True)
class Call:
    key: str  # unique in a run: "<task>/t<trajectory>/i<iteration>/<role>"
    role: str  # "generate" or "reflect"
    messages: list[dict[str, str]]
    seed: int


@dataclass(frozen=True)
class Reply:
    text: str | None
    tokens: int | None = None
    prompt_tokens: int | None = None
    error: str | None = None
    seconds: float = 0.0


class LLM(Protocol):
    def complete(self, calls: Sequence[Call], on_reply: Callable[[Call, Reply], None] | None = None) -> list[Reply]:
        """One reply per call; `on_reply`, when given, is called with each as it arrives (the run log
        appends it then, so a kill or a dead endpoint mid-batch keeps the replies already paid for)."""
        ...


class EndpointLLM:
    def __init__(self, config: AgentConfig):
        key = os.environ.get(config.api_key_env) if config.api_key_env else os.environ.get("OPENAI_API_KEY")
        if config.api_key_env and not key:
            raise ValueError(f"the API key variable {config.api_key_env} is not set")
        client_config = ClientConfig(config.endpoint, config.model, api_key=key or None,
                                     concurrency=config.concurrency, retries=config.retries,
                                     timeout=config.request_timeout)
        self.client = OpenAIClient(client_config, config.max_tokens, config.temperature, config.top_p)

    def probe(self) -> None:
        self.client.probe()

    def complete(self, calls: Sequence[Call], on_reply: Callable[[Call, Reply], None] | None = None) -> list[Reply]:
        start = time.monotonic()
        by_key = {call.key: call for call in calls}
        jobs = [Job(Prompt(call.key, call.messages), 0, call.seed) for call in calls]
        replies: dict[str, Reply] = {}
        for batch in self.client.generate(jobs):
            for job, out in batch:
                seconds = round(time.monotonic() - start, 3)
                if isinstance(out, Completion):
                    replies[job.prompt.id] = Reply(out.text, out.tokens, out.prompt_tokens, None, seconds)
                else:
                    replies[job.prompt.id] = Reply(None, error=out.error, seconds=seconds)
                if on_reply is not None:
                    on_reply(by_key[job.prompt.id], replies[job.prompt.id])
        return [replies.get(call.key, Reply(None, error="no reply")) for call in calls]
