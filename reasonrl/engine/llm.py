"""`LLM`: offline batch generation, shaped like vLLM's.

    llm = LLM("path/to/checkpoint")
    outs = llm.generate(["2 + 2 ="], SamplingParams(temperature=0, max_tokens=8))
    outs[0].outputs[0].text

On a vision-language checkpoint (Qwen2.5-VL) prompts may hold images (PIL images, uint8 arrays or
paths): chat content parts {"type": "image", "image": ...} or OpenAI's {"type": "image_url",
"image_url": {"url": path or data: URL}}, a `MultimodalPrompt`, or
{"prompt": text or ids with one <|image_pad|> per image, "images": [...]}.
"""

from __future__ import annotations

import numbers
import time
from pathlib import Path

from reasonrl.engine.config import EngineConfig
from reasonrl.engine.llm_engine import LLMEngine
from reasonrl.engine.sampling_params import SamplingParams
from reasonrl.engine.sequence import RequestOutput
from reasonrl.models.chat import check_parts, developer_as_system, text_chat
from reasonrl.models.model import DecoderLM
from reasonrl.models.qwen2_5_vl.prompt import MultimodalPrompt, build_prompt, expand_image_tokens, message_images
from reasonrl.models.qwen2_5_vl.processor import preprocess
from reasonrl.models.tokenizer import Tokenizer
from reasonrl.progress import Progress

Prompt = str | list[int] | MultimodalPrompt | dict  # dict: {"prompt": str | list[int], "images": [...]}


class LLM:
    def __init__(self, model: str | Path | DecoderLM, tokenizer: Tokenizer | None = None, device=None, dtype=None,
                 **engine_kwargs):
        if isinstance(model, DecoderLM):
            self.engine = LLMEngine(model, tokenizer, EngineConfig.from_kwargs(**engine_kwargs))
        else:
            self.engine = LLMEngine.from_pretrained(model, device=device, dtype=dtype, tokenizer=tokenizer, **engine_kwargs)
        self._counter = 0

    @property
    def tokenizer(self) -> Tokenizer | None:
        return self.engine.tokenizer

    def generate(self, prompts: Prompt | list[Prompt], params: SamplingParams | list[SamplingParams] | None = None,
                 progress: bool | float = False) -> list[RequestOutput]:
        """Generate for every prompt (text, token ids, or either with images); outputs come back in prompt order.
        `progress`: True, or seconds between lines: `generate: 37/500 prompts done (12.3 s, ...)` on
        stderr (`reasonrl.progress.Progress`: none for a job quicker than that; True is every 5 s)."""
        if _one_prompt(prompts):
            prompts = [prompts]
        params = SamplingParams() if params is None else params
        params = params if isinstance(params, list) else [params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"got {len(params)} SamplingParams for {len(prompts)} prompts")
        ids: list[str] = []
        done: dict[str, RequestOutput] = {}
        line = _progress_line(progress, len(prompts), self.engine)
        try:  # a prompt refused, or an interrupt, leaves none of this call's requests in the engine
            for prompt, p in zip(prompts, params):
                rid = f"gen-{self._counter}"
                self._counter += 1
                self.engine.add_request(rid, self._encode(prompt), p)
                ids.append(rid)
            mine = set(ids)
            while len(done) < len(ids):
                for out in self.engine.step():
                    if out.finished and out.request_id in mine:
                        done[out.request_id] = out
                if line is not None:
                    line.update(len(done))
        finally:
            for rid in ids:
                if rid not in done:
                    self.engine.abort(rid)
            if line is not None:  # (ended on an error too: a traceback starts on a line of its own)
                line.close()
        return [done[rid] for rid in ids]

    def chat(self, conversations: list[dict] | list[list[dict]], params: SamplingParams | None = None,
             *, progress: bool | float = False, **template_kwargs) -> list[RequestOutput]:
        """Generate replies to chat conversations, rendered with the checkpoint's chat template; user
        turns may hold image parts {"type": "image", "image": PIL image | uint8 array | path} or
        {"type": "image_url", "image_url": {"url": path | data: URL}}. `progress` as in `generate`."""
        if conversations and isinstance(conversations[0], dict):
            conversations = [conversations]
        tok = self._require_tokenizer()
        prompts = []
        for c in conversations:
            check_parts(c)  # a video or audio part the template would drop: the model would answer without it
            if message_images(c):
                prompts.append(build_prompt(tok, developer_as_system(c, tok), *self._vision("image parts"),
                                            **template_kwargs))
            else:
                prompts.append(tok.apply_chat_template(text_chat(c, tok), add_generation_prompt=True, **template_kwargs))
        return self.generate(prompts, params, progress)

    def _encode(self, prompt: Prompt) -> list[int] | MultimodalPrompt:
        if isinstance(prompt, MultimodalPrompt):
            return prompt
        if isinstance(prompt, dict):
            return self._with_images(prompt)
        if isinstance(prompt, str):
            return self._require_tokenizer().encode(prompt)
        return list(prompt)

    def _with_images(self, prompt: dict) -> MultimodalPrompt:
        """{"prompt": text or ids holding one image placeholder per image, "images": [...]}"""
        if set(prompt) != {"prompt", "images"}:
            raise ValueError(f"a dict prompt has the keys 'prompt' and 'images', got {sorted(prompt)}")
        cfg, image_cfg = self._vision("images")
        ids = self._encode(prompt["prompt"])
        pixel_values, grid = preprocess(list(prompt["images"]), image_cfg)
        ids = expand_image_tokens(ids, grid, cfg.image_token_id, cfg.vision.spatial_merge_size)
        return MultimodalPrompt.from_ids(ids, pixel_values, grid, cfg)

    def _vision(self, what: str):
        """The model's (VLMConfig, ImageConfig); a ValueError for a text-only model."""
        model = self.engine.model
        if getattr(model, "vlm_config", None) is None:
            raise ValueError(f"prompts with {what} need a vision-language checkpoint (Qwen2.5-VL); this one is text-only")
        return model.vlm_config, model.image_config

    def _require_tokenizer(self) -> Tokenizer:
        if self.engine.tokenizer is None:
            raise ValueError("text prompts need a tokenizer: the checkpoint has no tokenizer.json; pass token ids")
        return self.engine.tokenizer


def _one_prompt(prompts) -> bool:
    """Whether `generate` was given one prompt rather than a list of them: text, a dict or multimodal
    prompt, a 1-D array or tensor of ids, or a list whose first element is a token id."""
    if isinstance(prompts, (str, dict, MultimodalPrompt)) or getattr(prompts, "ndim", None) == 1:
        return True
    if not isinstance(prompts, (list, tuple)) or not prompts:
        return False
    first = prompts[0]
    return isinstance(first, numbers.Integral) or getattr(first, "ndim", None) == 0


def _progress_line(progress: bool | float, total: int, engine) -> Progress | None:
    """The stderr progress line `generate` asked for: False none, True every 5 s, a number every that
    many s; its detail, the tokens generated since it started and their rate."""
    if progress is False or progress is None:
        return None
    start = engine.num_generated_tokens

    def tokens() -> str:
        made, seconds = engine.num_generated_tokens - start, time.monotonic() - line.start
        return f"{made:,} tokens, {made / seconds if seconds > 0 else 0.0:,.0f} tok/s"

    line = Progress("generate", total, "prompts", detail=tokens, **({} if progress is True else {"every": progress}))
    return line
