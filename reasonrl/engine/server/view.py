"""Renders engine outputs as OpenAI completion / chat responses and stream chunks.

Log-probs are model output, untrusted: a non-finite one is rendered as -9999.0 (as vLLM does), so
a response is always valid JSON. A completion with `echo` starts with its prompt (in the first
chunk of a stream), and its log-probs with the prompt tokens' (None for the first token, which
nothing predicts); `text_offset` is each token's character offset in the choice's text, as the
cumulative length of the tokens' strings (as vLLM computes it). A chat log-prob's `bytes` are the
token's own bytes (a token holding part of a character reads as U+FFFD, its bytes do not).

A response's `id` is the request's: with several prompts, the one that names them all (their
engine requests are `ID-0`, `ID-1`, ...), which /v1/abort takes.
"""

from __future__ import annotations

import math
import time
from typing import Any

from reasonrl.engine.sequence import CompletionOutput, RequestOutput
from reasonrl.engine.tool_calls import ToolStream, parse
from reasonrl.engine.server.prepare import Job
from reasonrl.engine.server.responses import ResponseStream, response_object
from reasonrl.models.tokenizer import Tokenizer

NO_LOGPROB = -9999.0


def finite(x: float) -> float:
    return x if math.isfinite(x) else NO_LOGPROB


class View:
    """Renders engine outputs as OpenAI completion / chat responses and stream chunks."""

    def __init__(self, job: Job, request_id: str, rids: list[str], model_name: str, tokenizer: Tokenizer | None):
        """`request_id`: the request's id, `rids` its prompts' engine ids (the same one for one prompt)."""
        self.body, self.id, self.rids = job.body, request_id, rids
        self.prompt_tokens, self.chat = job.prompt_tokens, job.chat
        self.want_logprobs, self.model, self.tokenizer = job.logprobs, model_name, tokenizer
        self.api = job.api
        self.tools = job.chat and job.body.calls_tools  # read the output for tool calls (engine/tool_calls.py)
        self.tool_streams: dict[tuple[str, int], ToolStream] = {}
        self.created = int(time.time())
        # (rid, index) -> (tokens, chars) streamed, and the text_offset of the next token in the logprobs
        # (the token strings' lengths so far, as unstreamed: the text streamed lags the tokens while a
        # stop string may start)
        self.sent: dict[tuple[str, int], tuple[int, int, int]] = {}
        self.closed: set[tuple[str, int]] = set()  # choices whose final chunk went out
        self.holdback = max((len(s) for s in job.params[0].stop), default=1) - 1
        self.completion_tokens = 0
        self.echo = not job.chat and job.body.echo
        self.prompt_texts = dict(zip(rids, map(self._text, job.body.prompts()))) if self.echo else {}
        self.response_stream = ResponseStream(model_name, self.created, job.body, self.prompt_tokens, self.holdback,
                                              self.tools) if self.api == "responses" and job.body.stream else None

    def _text(self, prompt: str | list[int]) -> str:
        if isinstance(prompt, str):
            return prompt
        return self.tokenizer.decode(prompt, skip_special_tokens=False) if self.tokenizer else ""

    def _choice_index(self, rid: str, index: int) -> int:
        return self.rids.index(rid) * self.body.n + index

    def response(self, outputs: dict[str, RequestOutput]) -> dict[str, Any]:
        if self.api == "responses":
            out = outputs[self.rids[0]]
            content, calls = parse(out.outputs[0].text) if self.tools else (None, [])
            return response_object(out, self.model, self.created, self.body, self.prompt_tokens,
                                   text=(content or "") if self.tools else None, calls=calls)
        choices = []
        for rid in self.rids:
            out = outputs[rid]
            for o in out.outputs:
                choices.append(self._choice(out, o, o.text, o.token_ids, o.logprobs, o.top_logprobs, o.finish_reason,
                                            first=True))
        completion = sum(len(o.token_ids) for out in outputs.values() for o in out.outputs)
        prompt = self.prompt_tokens
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": choices,
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}}

    def chunks(self, out: RequestOutput):
        if self.response_stream is not None:
            yield from self.response_stream.events(out)
            return
        for o in out.outputs:
            key = (out.request_id, o.index)
            tokens_sent, chars_sent, offset = self.sent.get(key, (0, 0, 0))
            if key in self.closed or (key in self.sent and tokens_sent == len(o.token_ids) and not o.finish_reason):
                continue
            # hold back text that may turn out to start a stop string
            end = len(o.text) if o.finish_reason else max(chars_sent, len(o.text) - self.holdback)
            delta_tokens = o.token_ids[tokens_sent:]
            first = chars_sent == 0 and tokens_sent == 0
            if o.finish_reason:
                self.closed.add(key)
                self.completion_tokens += len(o.token_ids)
            tops = o.top_logprobs[tokens_sent:] if o.top_logprobs is not None else None
            choice = self._choice(out, o, o.text[chars_sent:end], delta_tokens, o.logprobs[tokens_sent:],
                                  tops, o.finish_reason, first=first, offset=offset, visible=o.text[:end])
            logged = choice["logprobs"] if not self.chat else None  # completions: where the next chunk's tokens start
            if logged and logged["tokens"]:
                offset = logged["text_offset"][-1] + len(logged["tokens"][-1])
            self.sent[key] = (len(o.token_ids), end, offset)
            yield {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                   "created": self.created, "model": self.model, "choices": [choice]}

    def usage_chunk(self) -> dict[str, Any]:
        prompt = self.prompt_tokens
        return {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": [],
                "usage": {"prompt_tokens": prompt, "completion_tokens": self.completion_tokens,
                          "total_tokens": prompt + self.completion_tokens}}

    def _choice(self, out: RequestOutput, o: CompletionOutput, text, token_ids, logprobs, tops, finish_reason,
                first=False, offset=0, visible: str | None = None):
        choice: dict[str, Any] = {"index": self._choice_index(out.request_id, o.index), "finish_reason": finish_reason}
        if self.chat:
            key = "delta" if self.body.stream else "message"
            message = {"role": "assistant", "content": text} if (first or not self.body.stream) else {"content": text}
            if self.tools:
                calls = self._tool_calls(message, (out.request_id, o.index), visible, finish_reason)
                choice["finish_reason"] = "tool_calls" if calls and finish_reason == "stop" else finish_reason
            choice[key] = message
            choice["logprobs"] = self._chat_logprobs(token_ids, logprobs, tops) if self.want_logprobs else None
        else:
            if first and self.echo:  # the prompt goes first: its text, tokens and log-probs
                prompt_tops = out.prompt_top_logprobs or [None] * len(out.prompt_ids)
                text, token_ids = self.prompt_texts[out.request_id] + text, out.prompt_ids + token_ids
                logprobs = [None, *(out.prompt_logprobs or [None] * len(out.prompt_ids))[1:], *logprobs]
                tops = [None, *prompt_tops[1:], *(tops or [{}] * len(o.token_ids))]
            choice["text"] = text
            choice["logprobs"] = self._completion_logprobs(token_ids, logprobs, tops, offset) if self.want_logprobs else None
            if first and out.prompt_logprobs is not None and self.body.prompt_logprobs is not None:
                choice["prompt_logprobs"] = self._prompt_logprobs(out)
        if self.body.return_token_ids:
            choice["token_ids"] = token_ids
        if finish_reason:
            choice["stop_reason"] = o.stop_reason
            choice["seed"] = o.seed
        return choice

    def _tool_calls(self, message: dict, key: tuple[str, int], visible: str | None, finish_reason) -> list:
        """Fill `message` (a response's message, or a stream's delta) with the content and tool calls
        the output holds; returns every call the choice made so far."""
        if not self.body.stream:
            message["content"], calls = parse(message["content"])
            if calls:
                message["tool_calls"] = calls
            return calls
        stream = self.tool_streams.setdefault(key, ToolStream())
        content, new = stream.push(visible, final=bool(finish_reason))
        message["content"] = content if content or not new else None
        if new:
            first = len(stream.calls) - len(new)
            message["tool_calls"] = [{"index": first + i, **call} for i, call in enumerate(new)]
        return stream.calls

    def _token(self, tid: int) -> str:
        return self.tokenizer.decode([tid], skip_special_tokens=False) if self.tokenizer else str(tid)

    def _bytes(self, tid: int) -> list[int]:
        return list(self.tokenizer.token_bytes(tid) if self.tokenizer else str(tid).encode())

    def _chat_logprobs(self, token_ids, logprobs, tops):
        tops = tops or [{} for _ in token_ids]
        content = []
        for tid, lp, top in zip(token_ids, logprobs, tops):
            content.append({"token": self._token(tid), "logprob": finite(lp), "bytes": self._bytes(tid),
                            "top_logprobs": [{"token": self._token(t), "logprob": finite(v), "bytes": self._bytes(t)}
                                             for t, v in top.items()]})
        return {"content": content}

    def _completion_logprobs(self, token_ids, logprobs, tops, offset: int):
        """OpenAI's legacy layout; an echoed prompt's first token has None where a log-prob would be."""
        tokens = [self._token(t) for t in token_ids]
        offsets = []
        for s in tokens:
            offsets.append(offset)
            offset += len(s)
        tops = tops or [{} for _ in token_ids]
        return {"tokens": tokens, "token_logprobs": [None if x is None else finite(x) for x in logprobs],
                "top_logprobs": [None if top is None else {self._token(t): finite(v) for t, v in top.items()} for top in tops],
                "text_offset": offsets}

    def _prompt_logprobs(self, out: RequestOutput) -> list[dict[str, dict] | None]:
        """vLLM's `prompt_logprobs`: per prompt position, the prompt token and the top-n by token id."""
        rows: list[dict[str, dict] | None] = [None]
        tops = out.prompt_top_logprobs or [None] * len(out.prompt_ids)
        for pos in range(1, len(out.prompt_ids)):
            tid, lp = out.prompt_ids[pos], out.prompt_logprobs[pos]
            row = {str(tid): {"logprob": finite(lp), "rank": out.prompt_ranks[pos], "decoded_token": self._token(tid)}}
            for rank, (t, v) in enumerate((tops[pos] or {}).items(), 1):
                row.setdefault(str(t), {"logprob": finite(v), "rank": rank, "decoded_token": self._token(t)})
            rows.append(row)
        return rows


def error_event(message: str, status: int = 500) -> dict[str, Any]:
    """The last event of a stream that failed after it started (its status line was already sent)."""
    return {"error": {"message": message, "type": "server_error" if status >= 500 else "invalid_request_error",
                      "param": None, "code": status}}
