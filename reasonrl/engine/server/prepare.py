"""From a request body to engine requests: parse, validate, decode images (server/images.py),
render the chat template, tokenise, check lengths, build sampling parameters. All of it runs in a
worker thread (`Offload`), never on the event loop, and every problem is an APIError naming the
parameter."""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, replace

from pydantic import BaseModel, ValidationError

from reasonrl.engine.grammar import Grammars
from reasonrl.engine.protocol import ChatRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest
from reasonrl.engine.responses_protocol import ResponsesRequest
from reasonrl.engine.sampling_params import ParamError, SamplingParams
from reasonrl.engine.server.config import ServeConfig
from reasonrl.engine.server.errors import APIError, validation_error
from reasonrl.engine.server.images import ChatImages
from reasonrl.engine.server.intake import parse_json
from reasonrl.models.chat import developer_as_system
from reasonrl.models.qwen2_5_vl.prompt import MultimodalPrompt
from reasonrl.models.tokenizer import Tokenizer

# A tokenizer's normaliser may merge a few characters into one (e.g. Hangul jamo, combining marks)
# before tokens are cut, so the bound below allows for 4 input characters per token character.
NORMALISED_SHRINK = 4
log = logging.getLogger("reasonrl.serve")


@dataclass
class Job:
    body: CompletionRequest | ChatRequest
    chat: bool
    prompts: list[list[int] | MultimodalPrompt]  # token ids, or ids with images (chats on a vision-language model)
    params: list[SamplingParams]  # one per prompt: unseeded prompts each get their own seed
    logprobs: bool  # the response carries log-probs
    api: str = "completions"  # the response's shape: "completions", "chat" or "responses"

    @property
    def prompt_tokens(self) -> int:
        return sum(len(_ids(p)) for p in self.prompts)


def _ids(prompt: list[int] | MultimodalPrompt) -> list[int]:
    return prompt.input_ids if isinstance(prompt, MultimodalPrompt) else prompt


class Preparer:
    def __init__(self, tokenizer: Tokenizer | None, max_model_len: int, cfg: ServeConfig, images: ChatImages | None = None,
                 grammars: Grammars | None = None):
        """`images`: reads image parts (a vision-language model); None refuses them as unsupported content.
        `grammars`: the engine's, to compile a request's output constraint here (a 400 naming the field)."""
        self.tokenizer, self.max_len, self.cfg, self.images = tokenizer, max_model_len, cfg, images
        self.grammars = grammars
        self.rng = random.Random(cfg.seed)  # None: OS entropy
        self.warned: set[str] = set()  # unknown field names already logged
        # no text longer than this can fit the context, whatever it says: refuse it untokenised
        longest = max((len(t) for t in tokenizer.tok.get_vocab(with_added_tokens=True)), default=1) if tokenizer else 1
        self.max_chars = max_model_len * longest * NORMALISED_SHRINK

    def completion(self, raw: bytes) -> Job:
        body = self._validate(raw, CompletionRequest)
        self._check_size(body, len(body.prompts()))
        prompts = [self._encode(p) for p in body.prompts()]
        params = self._params(body, prompts, body.max_tokens, body.logprobs or 0, "prompt", body.prompt_logprobs_wanted())
        return Job(body, False, prompts, params, body.logprobs is not None)

    def chat(self, raw: bytes) -> Job:
        return self._chat(self._validate(raw, ChatRequest))

    def responses(self, raw: bytes) -> Job:
        body = self._validate(raw, ResponsesRequest)
        try:
            chat = body.chat_body()
        except ValueError as exc:  # a malformed input item, named
            raise APIError(str(exc), param="input") from None
        try:
            return replace(self._chat(validate_body(chat, ChatRequest)), api="responses")
        except APIError as exc:  # named as the client sent it, not as the chat request it became
            name = _responses_param(exc.param)
            if name == exc.param:
                raise
            raise APIError(str(exc).replace(exc.param, name, 1), exc.status, name, exc.headers) from None

    def tokenize(self, raw: bytes) -> dict:
        body = validate_body(parse_json(raw), TokenizeRequest)
        _check_model(body.model, self.cfg.model_name)
        if body.prompt is not None:
            ids = self._encode(body.prompt, add_special_tokens=body.add_special_tokens)
        else:
            chat = ChatRequest.model_validate({"messages": [m.model_dump(exclude_none=True) for m in body.messages],
                                               "add_generation_prompt": body.add_generation_prompt})
            ids = _ids(self._chat_prompt(chat, pixels=False))  # as a chat completion has them: placeholders expanded
        return {"count": len(ids), "max_model_len": self.max_len, "tokens": ids}

    def detokenize(self, raw: bytes) -> dict:
        body = validate_body(parse_json(raw), DetokenizeRequest)
        _check_model(body.model, self.cfg.model_name)
        if self.tokenizer is None:
            raise APIError("this model has no tokenizer")
        vocab = self.tokenizer.vocab_size
        if bad := [t for t in body.tokens if t >= vocab]:
            raise APIError(f"token id {bad[0]} is outside the vocabulary ({vocab} ids)", param="tokens")
        return {"prompt": self.tokenizer.decode(body.tokens, skip_special_tokens=False)}

    def _chat(self, body: ChatRequest) -> Job:
        if self.tokenizer is None or not self.tokenizer.chat_template:
            raise APIError("this model has no chat template; use /v1/completions")
        self._check_size(body, 1)
        prompt = self._chat_prompt(body)
        max_tokens = body.max_completion_tokens or body.max_tokens or max(1, self.max_len - len(_ids(prompt)))
        logprobs = (body.top_logprobs or 0) if body.logprobs else 0
        return Job(body, True, [prompt], self._params(body, [prompt], max_tokens, logprobs, "messages"), body.logprobs,
                   "chat")

    def _chat_prompt(self, body: ChatRequest, pixels: bool = True) -> list[int] | MultimodalPrompt:
        """The chat rendered and tokenised: token ids, or ids with images (a vision-language model;
        without `pixels`, ids and image grids only: ChatImages.prompt)."""
        messages, images = self.images.messages(body.messages) if self.images else (None, [])
        prompt = self._encode(self._render(body, messages), param="messages", add_special_tokens=False)
        return self.images.prompt(prompt, images, pixels) if images else prompt

    def _validate(self, raw: bytes, model: type[CompletionRequest | ChatRequest | ResponsesRequest]):
        body = validate_body(parse_json(raw), model)
        unknown = body.unknown_fields()
        if unknown and self.cfg.strict_api:
            raise APIError(f"{unknown[0]}: unknown field (the server runs with --strict-api)", param=unknown[0])
        for name in unknown:
            key = ".".join(part for part in name.split(".") if not part.isdigit())  # tools.0.x and tools.1.x: one
            if key not in self.warned and len(self.warned) < 256:  # once per field name, bounded
                self.warned.add(key)
                log.warning("ignoring unknown request field %r (pass --strict-api to refuse such requests)", key[:64])
        return body

    def _check_size(self, body, num_prompts: int) -> None:
        _check_model(body.model, self.cfg.model_name)
        limit = self.cfg.max_sequences_per_request
        if num_prompts * body.n > limit:
            raise APIError(f"{num_prompts} prompts x n={body.n} is more than the {limit} sequences one request may "
                           "ask for on this server", param="n")

    def _compile(self, body, spec) -> None:
        """Compile the constraint now (cached for the engine), so a bad one is a 400 naming its field."""
        field = (body.constraint_fields() or ["tools"])[0]
        try:
            self.grammars.compile(spec)
        except (ParamError, ImportError) as exc:  # ImportError: the structured extra is not installed
            raise ParamError(field, f"{field}: {exc}") from None

    def _render(self, body: ChatRequest, messages: list[dict] | None = None) -> str:
        try:
            if messages is None:
                messages = [_template_message({**m.model_dump(exclude_none=True), "content": m.text()})
                            for m in body.messages]
            tools = {"tools": [t.model_dump(exclude_none=True, exclude=set(t.model_extra or ())) for t in body.tools]
                     } if body.tools else {}  # (a tool's unknown fields ignored)
            messages = developer_as_system(messages, self.tokenizer)
            final = ""
            if body.continue_final_message:
                last, final = _mark_final(messages[-1])
                messages = [*messages[:-1], last]
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=body.add_generation_prompt,
                                                      tokenize=False, **tools, **body.chat_template_kwargs)
        except Exception as exc:  # the template is fixed: whatever fails to render, the request made fail
            raise APIError(f"cannot render the chat template for these messages: {type(exc).__name__}: {exc}",
                           param="messages") from None
        return _continue_final(text, final) if body.continue_final_message else text

    def _encode(self, prompt: str | list[int], param: str = "prompt", add_special_tokens: bool = True) -> list[int]:
        if isinstance(prompt, list):
            return prompt
        if self.tokenizer is None:
            raise APIError("this model has no tokenizer: send token ids as the prompt", param=param)
        if len(prompt) > self.max_chars:
            raise APIError(f"the prompt ({len(prompt)} characters) cannot fit the context length {self.max_len}",
                           param=param)
        return self.tokenizer.encode(prompt, add_special_tokens=add_special_tokens)

    def _params(self, body, prompts: list, max_tokens: int, logprobs: int, param: str,
                prompt_logprobs: int | None = None) -> list[SamplingParams]:
        name = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) else "max_tokens"
        for p in map(_ids, prompts):
            if len(p) >= self.max_len:
                raise APIError(f"the prompt ({len(p)} tokens) does not fit the context length {self.max_len}", param=param)
            if len(p) + max_tokens > self.max_len:
                raise APIError(f"prompt ({len(p)} tokens) plus {name} ({max_tokens}) exceeds the context "
                               f"length {self.max_len}", param=name)
        resumed = len(body.resume.token_ids) if body.resume else 0
        if resumed > max_tokens:  # the engine would return them all: more tokens than the request asks for
            raise APIError(f"resume holds {resumed} tokens, more than {name} ({max_tokens})", param="resume.token_ids")
        try:
            params = body.sampling_params(max_tokens, logprobs, prompt_logprobs)
            if params.structured is not None and self.grammars is not None:
                self._compile(body, params.structured)
        except ParamError as exc:
            raise APIError(str(exc).removeprefix("SamplingParams."), param=exc.param) from None
        if params.seed is not None:
            return [params] * len(prompts)
        return [replace(params, seed=self.rng.randrange(1 << 62)) for _ in prompts]


def _template_message(message: dict) -> dict:
    """An assistant message's tool calls with their arguments as objects, as chat templates
    (Qwen2.5's among them) write them; OpenAI sends them as JSON text."""
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        return message
    out = []
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
            try:
                fn = {**fn, "arguments": json.loads(fn["arguments"])}
            except ValueError:
                pass
            call = {**call, "function": fn}
        out.append(call)
    return {**message, "tool_calls": out}


# Where the last message's text ends: private-use characters, then a space. The rendering is cut
# there; a template that trims the message (Llama's `| trim`) also drops that space, and the text
# before the tag then loses its trailing whitespace too. transformers' `continue_final_message`
# works this way, so the prompt is the text it renders. Nothing marks where the message starts:
# templates rewrite the start (Qwen3 keeps only what follows `<think>` and writes its own think block).
CONTINUE_TAG = "\ue000continue-here\ue000 "


def _mark_final(message: dict) -> tuple[dict, str]:
    """The message with the tag after its text (the whole content, or a list of parts' last text
    part: an image-and-text message keeps its image), and that text."""
    content = message["content"]
    if isinstance(content, str):
        return {**message, "content": content + CONTINUE_TAG}, content
    parts = list(content) if isinstance(content, list) else []
    last = max((i for i, part in enumerate(parts) if isinstance(part, dict) and part.get("type") == "text"), default=None)
    if last is None:
        return message, ""  # no text: `_continue_final` finds no tag and says so
    text = str(parts[last].get("text", ""))
    parts[last] = {**parts[last], "text": text + CONTINUE_TAG}
    return {**message, "content": parts}, text


def _continue_final(text: str, final: str = "") -> str:
    """The conversation rendered with the tag after the last message's text (`_mark_final`), cut
    there so the model continues that text (found by the tag, not by searching for the text, which
    may also occur in what the template writes after it: "end" in "<|im_end|>"). `final`, the text
    as sent, must be in what is kept (what transformers checks): a template that drops or rewrites
    part of it (R1-Distill's drops the think block) leaves nothing the model could continue as sent."""
    tag = CONTINUE_TAG.rstrip()
    at = text.rfind(tag)
    if at < 0:
        raise APIError("continue_final_message needs the last message to have text the chat template keeps",
                       param="messages")
    kept = text[:at]
    if not text.startswith(CONTINUE_TAG, at) and final.strip():  # the template trimmed the message: so is its end
        kept = kept[:len(kept) - (len(final) - len(final.rstrip()))]  # (only the message's: not what came before)
    if final.strip() not in kept:
        raise APIError("continue_final_message needs the last message to have text the chat template keeps: "
                       "this template drops or rewrites part of it", param="messages")
    return kept


def _responses_param(param: str | None) -> str | None:
    """A chat request's field as the Responses request that was translated into it names it (its
    input items are not one-to-one with messages: instructions and merged calls, so `input`)."""
    head = (param or "").split(".")[0]
    renamed = {"messages": "input", "response_format": "text.format", "max_tokens": "max_output_tokens",
               "max_completion_tokens": "max_output_tokens"}.get(head)
    return renamed or param


def validate_body(data: dict, model: type[BaseModel]):
    """The body as `model`, or a 400 APIError naming the first offending parameter."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc.errors()) from None


def _check_model(requested: str | None, served: str) -> None:
    if requested not in (None, served):
        raise APIError(f"model {requested!r} is not served here; this server serves {served!r}", 404, "model")
