"""Tokenizer and chat template from a Hugging Face checkpoint directory (no transformers needed).

Reads tokenizer.json with the `tokenizers` library, the chat template from tokenizer_config.json
(or chat_template.json, as vision-language checkpoints ship it, or chat_template.jinja), and
end-of-sequence ids from tokenizer_config.json, generation_config.json and config.json together:
generation stops on any of them, as in vLLM.
Chat templates render in a sandboxed Jinja environment configured like transformers'.
"""

from __future__ import annotations

import functools
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer


class Tokenizer:
    def __init__(self, tok: HFTokenizer, chat_template: str | None = None, eos_token: str | None = None,
                 bos_token: str | None = None, pad_token: str | None = None, extra_eos_ids: tuple[int, ...] = (),
                 named_templates: dict[str, str] | None = None):
        """`named_templates`: the other templates of a checkpoint that names several ("tool_use" is
        rendered when tools are given, as transformers does); `chat_template` is the default one."""
        self.tok = tok
        self.chat_template = chat_template
        self.named_templates = dict(named_templates or {})
        self.eos_token, self.bos_token, self.pad_token = eos_token, bos_token, pad_token
        eos = [tok.token_to_id(eos_token)] if eos_token else []
        self.eos_token_ids = tuple(dict.fromkeys(i for i in [*eos, *extra_eos_ids] if i is not None))
        self._compiled: dict[str, Any] = {}
        decoder = json.loads(tok.decoder.__getstate__()) if tok.decoder is not None else {}
        self._decoders = {d.get("type") for d in [decoder, *decoder.get("decoders", [])]}  # e.g. {"ByteLevel"}
        self._added = set(tok.get_added_tokens_decoder())

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        if not (path / "tokenizer.json").is_file():
            raise FileNotFoundError(f"no tokenizer.json in {path}")
        tok = HFTokenizer.from_file(str(path / "tokenizer.json"))
        cfg = _read_json(path / "tokenizer_config.json")
        template, named = cfg.get("chat_template"), {}
        if isinstance(template, list):  # the named form: [{"name": "default", ...}, {"name": "tool_use", ...}]
            named = {t["name"]: t["template"] for t in template if isinstance(t, dict) and "name" in t}
            template = named.pop("default", template[0]["template"])
        if (path / "chat_template.json").is_file():
            template = _read_json(path / "chat_template.json").get("chat_template", template)
        if (path / "chat_template.jinja").is_file():
            template = (path / "chat_template.jinja").read_text()
        extra = []
        for file in ("generation_config.json", "config.json"):
            ids = _read_json(path / file).get("eos_token_id")
            extra += ids if isinstance(ids, list) else [] if ids is None else [ids]
        return cls(tok, template, _token(cfg.get("eos_token")), _token(cfg.get("bos_token")),
                   _token(cfg.get("pad_token")), tuple(extra), named)

    @functools.cached_property
    def end_of_turn_ids(self) -> list[int]:
        """The token a trained response ends with: the one the chat template writes right after an
        assistant message when generation stops on it (Llama 3's <|eot_id|>, Qwen's <|im_end|>), else
        the first end-of-sequence id (a template whose turn end is not a stop token, e.g. a base
        Qwen2.5's <|im_end|>, would leave the model running on past its answer)."""
        sentinel = "reasonrl-end-of-turn-7f3a"
        try:
            text = self.apply_chat_template([{"role": "user", "content": "a"}, {"role": "assistant", "content": sentinel}],
                                            add_generation_prompt=False, tokenize=False)
        except Exception:  # a template that renders no assistant turn this way: EOS it is
            text = ""
        after = self.encode(text.split(sentinel, 1)[1], add_special_tokens=False)[:1] if sentinel in text else []
        return after if after and after[0] in self.eos_token_ids else list(self.eos_token_ids[:1])

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    @property
    def pad_token_id(self) -> int:
        if self.pad_token and self.tok.token_to_id(self.pad_token) is not None:
            return self.tok.token_to_id(self.pad_token)
        return self.eos_token_ids[0] if self.eos_token_ids else 0

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        # encode_batch releases the GIL while it works and encode does not: a long text encoded in
        # a worker thread must not freeze the server's event loop (same ids either way)
        return self.tok.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for, where decoding it alone gives U+FFFD for a piece of a
        character: a byte-level BPE token's own bytes (GPT-2's byte-to-character map undone), a
        byte-fallback token's (`<0xE2>`) one byte; any other token's text in UTF-8."""
        piece = self.tok.id_to_token(token_id)
        if piece is not None and token_id not in self._added:  # (an added token is its text)
            if "ByteLevel" in self._decoders and all(c in BYTE_OF_CHAR for c in piece):
                return bytes(BYTE_OF_CHAR[c] for c in piece)
            if "ByteFallback" in self._decoders and BYTE_TOKEN.fullmatch(piece):
                return bytes([int(piece[3:5], 16)])
        return self.decode([token_id], skip_special_tokens=False).encode()

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                            tokenize: bool = True, **kwargs) -> str | list[int]:
        if not self.chat_template:
            raise ValueError("this tokenizer has no chat template (tokenizer_config.json has no 'chat_template')")
        name = "tool_use" if kwargs.get("tools") and "tool_use" in self.named_templates else "default"
        if name not in self._compiled:
            self._compiled[name] = _compile(self.named_templates.get(name, self.chat_template))
        # what transformers passes: tools and documents as None when absent (templates test `is not none`),
        # the special tokens by name, then the caller's variables
        variables = {"tools": None, "documents": None, "bos_token": self.bos_token or "", "eos_token": self.eos_token or "",
                     "pad_token": self.pad_token or "", **kwargs}
        text = self._compiled[name].render(messages=messages, add_generation_prompt=add_generation_prompt, **variables)
        # The template writes any BOS itself, so encoding must not add another.
        return self.encode(text, add_special_tokens=False) if tokenize else text

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.tok.save(str(path / "tokenizer.json"))
        # added_tokens_decoder: transformers rebuilds some tokenizer classes from the vocabulary and
        # keeps only the special tokens listed here (Qwen2Tokenizer for qwen-family checkpoints)
        added = {str(i): {"content": t.content, "lstrip": t.lstrip, "rstrip": t.rstrip, "normalized": t.normalized,
                          "single_word": t.single_word, "special": t.special}
                 for i, t in sorted(self.tok.get_added_tokens_decoder().items())}
        template = ([{"name": "default", "template": self.chat_template},
                     *({"name": n, "template": t} for n, t in self.named_templates.items())]
                    if self.named_templates and self.chat_template else self.chat_template)
        cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": template,
               "eos_token": self.eos_token, "bos_token": self.bos_token, "pad_token": self.pad_token,
               "added_tokens_decoder": added}
        (path / "tokenizer_config.json").write_text(json.dumps({k: v for k, v in cfg.items() if v is not None}, indent=2) + "\n")


def _byte_of_char() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet, inverted: the printable bytes stand for themselves, the others
    for the characters from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + i): b for i, b in enumerate(others)}}


BYTE_OF_CHAR = _byte_of_char()
BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")  # a byte-fallback token


MAX_PENDING = 8
"""Ids an IncrementalDecoder holds back at most (a UTF-8 character is 4 bytes at most)."""


class IncrementalDecoder:
    """Decodes a growing list of token ids into text pieces without re-decoding everything.

    A few tokens of context are re-decoded with each new token, so multi-token characters and
    leading-space rules come out as a full decode would give them; text is held back while the
    tail is an incomplete UTF-8 sequence.
    """

    def __init__(self, tokenizer: Tokenizer, prompt_ids: list[int] | None = None, skip_special_tokens: bool = True):
        self.tokenizer, self.skip = tokenizer, skip_special_tokens
        self.ids: list[int] = list(prompt_ids or [])[-6:]
        self.prefix_offset = 0
        self.read_offset = len(self.ids)

    def push(self, token_ids: list[int], final: bool = False) -> str:
        """Text the new ids complete; `final` also releases an incomplete tail (as U+FFFD). Ids are held
        back `MAX_PENDING` at most: a longer run that adds no text (skipped special tokens) leaves the
        window, one that never completes a character (invalid bytes) is written out, so the window never
        grows with the output (it did: each push decoded all of such a run again, quadratic in a
        degenerate response)."""
        self.ids.extend(token_ids)
        prefix = self.tokenizer.decode(self.ids[self.prefix_offset:self.read_offset], self.skip)
        full = self.tokenizer.decode(self.ids[self.prefix_offset:], self.skip)
        pending = len(self.ids) - self.read_offset
        if len(full) <= len(prefix):  # no new text
            if pending >= MAX_PENDING:  # ids that write nothing: out of the window, the context stays
                del self.ids[self.read_offset:]
            return ""
        if full.endswith("\ufffd") and not final:
            if pending < MAX_PENDING:
                return ""
            # a long run that ends inside a character (a resume's given ids, or garbage): written out up to
            # the last of the 3 cuts before its end that ends no character early (a character's incomplete
            # start is 3 bytes at most), the ids after it left for a later id to complete
            for upto in range(len(self.ids) - 1, len(self.ids) - 4, -1):
                text = self.tokenizer.decode(self.ids[self.prefix_offset:upto], self.skip)
                if not text.endswith("\ufffd"):
                    return self._emit(upto, prefix, text)
        return self._emit(len(self.ids), prefix, full)

    def _emit(self, upto: int, prefix: str, text: str) -> str:
        """`text` (of the ids up to `upto`) after `prefix`; those ids become the next context window (older
        ids are never decoded again), the ids after them stay pending."""
        context = self.ids[self.read_offset:upto]
        self.ids = context + self.ids[upto:]
        self.prefix_offset, self.read_offset = 0, len(context)
        return text[len(prefix):]


def _read_json(file: Path) -> dict:
    if not file.is_file():
        return {}
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file} is not valid JSON: {exc}") from None


def _token(value: Any) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def _compile(template: str):
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        """`{% generation %}...{% endgeneration %}` (templates that mark the assistant's tokens for a
        loss mask, TRL's): rendered as its body."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise ValueError(f"chat template error: {message}")

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, Generation])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)
