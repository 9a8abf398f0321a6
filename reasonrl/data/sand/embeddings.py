"""Embeddings from an OpenAI-compatible `/embeddings` endpoint, through the shared client.

`EmbeddingClient` is the eval client (reasonrl/eval/client.py: bounded concurrency, retries with
backoff and jitter, Retry-After, timeouts, the dead-endpoint check) with another request body and
another response parser: one text per request, one vector back.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from reasonrl.config import is_number
from reasonrl.eval.client import ClientConfig, OpenAIClient
from reasonrl.eval.jobs import Failure, Job


@dataclass(frozen=True)
class Embedding:
    vector: list[float]
    prompt_tokens: int | None

    def row(self) -> dict:
        return {"embedding": self.vector, "prompt_tokens": self.prompt_tokens, "completion_tokens": None}


class EmbeddingClient(OpenAIClient):
    def __init__(self, config: ClientConfig):
        super().__init__(config, max_tokens=1, temperature=0.0, top_p=1.0)

    def _body(self, job: Job) -> tuple[str, dict]:
        return f"{self.root}/embeddings", {"model": self.config.model, "input": job.prompt.messages[-1]["content"]}

    def _parse(self, r: httpx.Response) -> Embedding | Failure:
        try:
            data = r.json()
            vector = data["data"][0]["embedding"]
            if not isinstance(vector, list) or not vector or not all(is_number(v) for v in vector):
                raise ValueError("the embedding is not a non-empty list of finite numbers")
            tokens = (data.get("usage") or {}).get("prompt_tokens")
            return Embedding([float(v) for v in vector], tokens if isinstance(tokens, int) else None)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            return Failure(f"malformed embedding response ({exc!r}): {r.text[:200]}")
