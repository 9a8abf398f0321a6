"""`ChatEncoder`: chat messages -> the model's input, one rule for rollouts, SFT and evaluation.

Text models get the tokenizer's chat template as token ids. A vision-language model given
messages with image parts (`{"type": "image", "image": path | PIL image | uint8 array}`, or
OpenAI's `{"type": "image_url", "image_url": {"url": path | base64 PNG/JPEG data: URL}}`) gets a
`MultimodalPrompt`: the template rendered, each image's placeholder widened to its merged tokens,
pixels preprocessed, M-RoPE positions computed. Both the engine (`add_request`) and the training
forward take either form; `token_ids` gives the ids of both.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from reasonrl.config import check_template_kwargs
from reasonrl.models.qwen2_5_vl.prompt import MultimodalPrompt, build_prompt, content_parts, message_images
from reasonrl.models.tokenizer import Tokenizer

ModelInput = list[int] | MultimodalPrompt


def token_ids(inp: ModelInput) -> list[int]:
    return list(inp.input_ids) if isinstance(inp, MultimodalPrompt) else list(inp)


def multimodal(inp: ModelInput) -> MultimodalPrompt | None:
    """The prompt's images and positions, or None for a text prompt."""
    return inp if isinstance(inp, MultimodalPrompt) else None


class ChatEncoder:
    def __init__(self, tokenizer: Tokenizer, model: Any = None, template_kwargs: dict[str, Any] | None = None):
        """`template_kwargs`: variables for the chat template ({"enable_thinking": False}: Qwen3's
        non-thinking mode)."""
        self.tokenizer = tokenizer
        self.template_kwargs = check_template_kwargs(template_kwargs or {}, "chat_template_kwargs")
        self.vlm_config = getattr(model, "vlm_config", None)
        self.image_config = getattr(model, "image_config", None)

    @property
    def takes_images(self) -> bool:
        return self.vlm_config is not None

    def __call__(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> ModelInput:
        check_parts(messages)
        if not message_images(messages):
            return self.tokenizer.apply_chat_template(text_chat(messages, self.tokenizer),
                                                      add_generation_prompt=add_generation_prompt, **self.template_kwargs)
        if not self.takes_images:
            raise ValueError("these messages hold images, but the model is text-only (use a vision-language "
                             "checkpoint such as Qwen2.5-VL)")
        return build_prompt(self.tokenizer, developer_as_system(messages, self.tokenizer), self.vlm_config,
                            self.image_config, add_generation_prompt, **self.template_kwargs)


PART_TYPES = ("text", "image", "image_url")


def text_chat(messages: list[dict[str, Any]], tokenizer: Tokenizer) -> list[dict[str, Any]]:
    """A chat without image parts as a text template renders it: developer as system, text parts joined."""
    return text_only(developer_as_system(messages, tokenizer))


def developer_as_system(messages: list[dict[str, Any]], tokenizer: Tokenizer) -> list[dict[str, Any]]:
    """OpenAI's `developer` role (its newer name for instructions from whoever builds on the API) as
    `system`, where the chat template does not name the role: Qwen's drop such a message, Llama's
    write it under a header the model never saw (vLLM does the same)."""
    if not any(isinstance(m, dict) and m.get("role") == "developer" for m in messages) or _names_developer(
            tokenizer.chat_template, *tokenizer.named_templates.values()):
        return messages
    return [{**m, "role": "system"} if isinstance(m, dict) and m.get("role") == "developer" else m for m in messages]


@functools.lru_cache(maxsize=16)
def _names_developer(*templates: str | None) -> bool:
    """Whether a template compares a role with the string 'developer' (gpt-oss's does)."""
    return any(isinstance(t, str) and re.search(r"""['"]developer['"]""", t) for t in templates)


def text_only(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chat with each content given as text parts joined into one string, as the server joins them:
    text models' templates render a string (Qwen3's put nothing of a list in the prompt, Llama 3.1's its
    Python repr). For chats without image parts."""
    out = []
    for i, m in enumerate(messages):
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):
            texts = [p.get("text") if isinstance(p, dict) else None for p in content]
            if not all(isinstance(t, str) for t in texts):
                j = next(j for j, t in enumerate(texts) if not isinstance(t, str))
                raise ValueError(f'messages.{i}.content.{j}: a text part is {{"type": "text", "text": a string}}, '
                                 f"got {str(content[j])[:80]}")
            m = {**m, "content": "".join(texts)}
        out.append(m)
    return out


def check_parts(messages: list[dict[str, Any]]) -> None:
    """A content part of another type (audio, video, ...) is a ValueError naming it: chat templates
    drop what they do not know, and the model would answer without it."""
    for where, part in content_parts(messages):
        if part.get("type", "text") not in PART_TYPES:
            raise ValueError(f"{where}: content parts of type {str(part.get('type'))[:40]!r} are not supported "
                             f"(only {', '.join(PART_TYPES)})")
