"""Renders engine outputs as OpenAI completion / chat responses and stream chunks.

Log-probs are model output, untrusted: a non-finite one is rendered as -9999.0 (as vLLM does), so
a response is always valid JSON.
"""

from __future__ import annotations

import math
import time
from typing import Any

from reasonrl.engine.sequence import CompletionOutput, RequestOutput
from reasonrl.engine.server.prepare import Job
from reasonrl.models.tokenizer import Tokenizer

NO_LOGPROB = -9999.0


def finite(x: float) -> float:
    return x if math.isfinite(x) else NO_LOGPROB


class View:
    """Renders engine outputs as OpenAI completion / chat responses and stream chunks."""

    def __init__(self, job: Job, rids: list[str], model_name: str, tokenizer: Tokenizer | None):
        self.body, self.rids, self.prompt_tokens, self.chat = job.body, rids, job.prompt_tokens, job.chat
        self.want_logprobs, self.model, self.tokenizer = job.logprobs, model_name, tokenizer
        self.created = int(time.time())
        self.sent: dict[tuple[str, int], tuple[int, int]] = {}  # (rid, index) -> (tokens, chars) streamed
        self.closed: set[tuple[str, int]] = set()  # choices whose final chunk went out
        self.holdback = max((len(s) for s in job.params[0].stop), default=1) - 1
        self.completion_tokens = 0

    def _choice_index(self, rid: str, index: int) -> int:
        return self.rids.index(rid) * self.body.n + index

    def response(self, outputs: dict[str, RequestOutput]) -> dict[str, Any]:
        choices = []
        for rid in self.rids:
            for o in outputs[rid].outputs:
                choices.append(self._choice(rid, o, o.text, o.token_ids, o.logprobs, o.top_logprobs, o.finish_reason))
        completion = sum(len(o.token_ids) for out in outputs.values() for o in out.outputs)
        prompt = self.prompt_tokens
        return {"id": self.rids[0], "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": choices,
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}}

    def chunks(self, out: RequestOutput):
        for o in out.outputs:
            key = (out.request_id, o.index)
            tokens_sent, chars_sent = self.sent.get(key, (0, 0))
            if key in self.closed or (key in self.sent and tokens_sent == len(o.token_ids) and not o.finish_reason):
                continue
            # hold back text that may turn out to start a stop string
            end = len(o.text) if o.finish_reason else max(chars_sent, len(o.text) - self.holdback)
            delta_tokens = o.token_ids[tokens_sent:]
            self.sent[key] = (len(o.token_ids), end)
            if o.finish_reason:
                self.closed.add(key)
                self.completion_tokens += len(o.token_ids)
            tops = o.top_logprobs[tokens_sent:] if o.top_logprobs is not None else None
            choice = self._choice(out.request_id, o, o.text[chars_sent:end], delta_tokens, o.logprobs[tokens_sent:],
                                  tops, o.finish_reason, first=chars_sent == 0 and tokens_sent == 0)
            yield {"id": self.rids[0], "object": "chat.completion.chunk" if self.chat else "text_completion",
                   "created": self.created, "model": self.model, "choices": [choice]}

    def usage_chunk(self) -> dict[str, Any]:
        prompt = self.prompt_tokens
        return {"id": self.rids[0], "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": [],
                "usage": {"prompt_tokens": prompt, "completion_tokens": self.completion_tokens,
                          "total_tokens": prompt + self.completion_tokens}}

    def _choice(self, rid, o: CompletionOutput, text, token_ids, logprobs, tops, finish_reason, first=False):
        choice: dict[str, Any] = {"index": self._choice_index(rid, o.index), "finish_reason": finish_reason}
        if self.chat:
            key = "delta" if self.body.stream else "message"
            choice[key] = {"role": "assistant", "content": text} if (first or not self.body.stream) else {"content": text}
        else:
            choice["text"] = text
        choice["logprobs"] = self._logprobs(token_ids, logprobs, tops) if self.want_logprobs else None
        if self.body.return_token_ids:
            choice["token_ids"] = token_ids
        if finish_reason:
            choice["stop_reason"] = o.stop_reason
            choice["seed"] = o.seed
        return choice

    def _token(self, tid: int) -> str:
        return self.tokenizer.decode([tid], skip_special_tokens=False) if self.tokenizer else str(tid)

    def _logprobs(self, token_ids, logprobs, tops):
        tokens = [self._token(t) for t in token_ids]
        logprobs = [finite(x) for x in logprobs]
        tops = [{t: finite(v) for t, v in top.items()} for top in tops] if tops else [{} for _ in token_ids]
        if self.chat:
            return {"content": [{"token": s, "logprob": lp, "bytes": list(s.encode()),
                                 "top_logprobs": [{"token": self._token(t), "logprob": v, "bytes": list(self._token(t).encode())}
                                                  for t, v in top.items()]}
                                for s, lp, top in zip(tokens, logprobs, tops)]}
        return {"tokens": tokens, "token_logprobs": logprobs,
                "top_logprobs": [{self._token(t): v for t, v in top.items()} for top in tops]}


def error_event(message: str, status: int = 500) -> dict[str, Any]:
    """The last event of a stream that failed after it started (its status line was already sent)."""
    return {"error": {"message": message, "type": "server_error" if status >= 500 else "invalid_request_error",
                      "param": None, "code": status}}
