"""`reasonrl sft`: supervised fine-tuning on JSONL prompt/response pairs, loss on the response only.

Each line is {"prompt": str | [chat messages], "response": str}. A string prompt becomes a user
message rendered with the tokenizer's chat template (`chat=False`: plain concatenation); the
response is followed by the end-of-sequence token, so the policy learns to stop. Messages may
hold images for a vision-language model (`{"type": "image", "image": "images/x.png"}`, a path
relative to the JSONL file, or OpenAI's `{"type": "image_url", "image_url": {"url": ...}}` with such
a path or a data: URL); the loss is then computed with them, and `freeze_vision` keeps the vision
tower and merger fixed. An example keeps its images as the row names them and they are preprocessed
for each batch that holds it (the next batch's on a worker thread during a step), so memory does not
grow with the pixels of the data set.

A run (`sft_run.py`) behaves like an RL run: config saved in the run directory and checked on rerun,
checkpoints every `save_every` steps with optimizer, schedule and data order, resume by rerunning,
metrics.jsonl (loss, held-out loss, learning rate, tokens/s, step time, ETA), Ctrl-C or SIGTERM
finishing the step and saving. The fine-tuned model is saved at the run directory's root.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import random
import sys
import time
from array import array
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from reasonrl.config import check, check_template_kwargs
from reasonrl.eval.store import jsonl_lines
from reasonrl.models.chat import ChatEncoder, multimodal, text_chat, token_ids
from reasonrl.models.model import DecoderLM
from reasonrl.models.qwen2_5_vl.prompt import REMOTE, MultimodalPrompt, images_prompt
from reasonrl.models.tokenizer import Tokenizer
from reasonrl.rl.batch import micro_batches
from reasonrl.rl.config import OptimSection
from reasonrl.rl.update import autocast, freeze_vision, make_optimizer, resume_optimizer, step_if_finite, trainable
from reasonrl.rollout.sample import Sample


@dataclass(slots=True)
class SFTConfig:
    epochs: float = 1.0
    """Passes over the training data (fractions allowed)."""
    lr: float = 1e-4
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    warmup_steps: int = 0
    """Linear warm-up over this many steps."""
    schedule: Literal["constant", "cosine"] = "cosine"
    """Learning-rate schedule after warm-up."""
    grad_clip: float = 1.0
    """Clip the gradient's global norm to this before each step."""
    samples_per_step: int = 32
    """Examples per optimizer step."""
    max_tokens_per_microbatch: int = 8192
    """Padded tokens per forward/backward; larger steps accumulate gradients."""
    max_len: int = 2048
    """Examples longer than this (prompt + response) are skipped, and counted."""
    chat: bool = True
    """Render string prompts as a user message with the chat template; false: concatenate as they are."""
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    """Variables for the chat template ({enable_thinking: false}: Qwen3's non-thinking mode)."""
    freeze_vision: bool = False
    """Vision-language models: keep the vision tower and merger frozen (as LVR and ImageDoctor do)."""
    autocast: Literal["bfloat16", "float16"] | None = None
    """Compute dtype on CUDA under torch.autocast, over the float32 weights; None: float32 throughout."""
    seed: int = 0
    """Seeds the data order (and the held-out split)."""

    def __post_init__(self):
        check(0 < self.epochs < math.inf, "epochs", f"must be a finite number > 0, got {self.epochs}")
        check_template_kwargs(self.chat_template_kwargs, "chat_template_kwargs")
        for name in ("samples_per_step", "max_tokens_per_microbatch", "max_len"):
            check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        try:  # lr, weight decay, betas, clip and warm-up, checked as the RL run's are
            self.optim()
        except ValueError as exc:
            raise ValueError(str(exc).removeprefix("optim.")) from None

    def optim(self) -> OptimSection:
        """The same optimizer settings in the RL run's terms (one AdamW and LR schedule for both)."""
        return OptimSection(lr=self.lr, weight_decay=self.weight_decay, betas=self.betas, grad_clip=self.grad_clip,
                            warmup_steps=self.warmup_steps, schedule=self.schedule,
                            max_tokens_per_microbatch=self.max_tokens_per_microbatch)


Turn = Literal["template", "response"]
"""What an example trains on after its prompt: the assistant turn the chat template writes for the
response (`template_turn`), or the response as given (how runs started before that were trained)."""


def sft_example(prompt: str | list[dict], response: str, encoder: ChatEncoder | Tokenizer, chat: bool = True,
                turn: Turn = "template") -> Sample:
    """One example as a sample: the prompt (a string, or chat messages, images included for a VLM)
    through the chat template with its generation prompt, or encoded as it is when not `chat`; the
    response ends with the template's end of turn where generation stops on it, else with EOS."""
    encoder = encoder if isinstance(encoder, ChatEncoder) else ChatEncoder(encoder)
    tokenizer, inp = encoder.tokenizer, None
    if not chat:
        prompt_ids = tokenizer.encode(prompt if isinstance(prompt, str) else json.dumps(prompt))
        response_ids = tokenizer.encode(response, add_special_tokens=False) + list(tokenizer.eos_token_ids[:1])
        return Sample(prompt_ids=prompt_ids, response_ids=response_ids)
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    inp = encoder(messages)
    prompt_ids, response_ids = token_ids(inp), tokenizer.encode(response, add_special_tokens=False)
    if turn == "template":
        turn_ids = template_turn(tokenizer, text_chat(messages, tokenizer), response, encoder.template_kwargs) \
            if multimodal(inp) is None else None
        response_ids = turn_ids or not_reopened(tokenizer, prompt_ids, response_ids) + tokenizer.end_of_turn_ids
    else:
        response_ids += tokenizer.end_of_turn_ids
    return Sample(prompt_ids=prompt_ids, response_ids=response_ids, multimodal=multimodal(inp))


def template_turn(tokenizer: Tokenizer, messages: list[dict], response: str, template_kwargs: dict | None = None
                  ) -> list[int] | None:
    """The ids of the chat template's own rendering of `response` as the assistant's turn after
    `messages`, past the generation prompt, up to and with its end of turn (Qwen3's writes an empty
    <think></think> block before an answer without reasoning: a model fine-tuned on the bare answer
    would learn to skip it). None where that rendering does not extend the generation prompt, drops
    part of the response (R1-Distill's drops the reasoning of assistant turns) or does not end the
    turn with the end-of-turn token."""
    turn = [*messages, {"role": "assistant", "content": response}]
    try:
        before, prompt, full = (tokenizer.apply_chat_template(m, add_generation_prompt=g, tokenize=False,
                                                              **(template_kwargs or {}))
                                for m, g in ((messages, False), (messages, True), (turn, False)))
    except Exception:  # noqa: BLE001 - a template that renders no such turn: the response as it is
        return None
    if not (full.startswith(prompt) and full.startswith(before)) or response.strip() not in full[len(before):]:
        return None
    ids, end = tokenizer.encode(full[len(prompt):], add_special_tokens=False), tokenizer.end_of_turn_ids[0]
    return ids[:ids.index(end) + 1] if end in ids else None


def not_reopened(tokenizer: Tokenizer, prompt_ids: list[int], response_ids: list[int]) -> list[int]:
    """The response without a start that repeats the end of the generation prompt, special tokens
    included (a template that opens <think> in the prompt, and a trace that opens it again)."""
    added = tokenizer.tok.get_added_tokens_decoder()
    for k in range(min(8, len(prompt_ids), len(response_ids)), 0, -1):
        if prompt_ids[-k:] == response_ids[:k] and any(i in added for i in response_ids[:k]):
            return response_ids[k:]
    return response_ids


def _resolve_images(prompt, base: Path):
    """Image parts' relative paths (of image and image_url parts), taken relative to the data file."""
    if not isinstance(prompt, list):
        return prompt
    for message in prompt:
        for part in message.get("content") if isinstance(message, dict) and isinstance(message.get("content"), list) else []:
            if isinstance(part, dict) and part.get("type") == "image" and isinstance(part.get("image"), str):
                part["image"] = _local(part["image"], base)
            elif isinstance(part, dict) and part.get("type") == "image_url" and isinstance(part.get("image_url"), dict) \
                    and isinstance(part["image_url"].get("url"), str):
                part["image_url"] = {**part["image_url"], "url": _local(part["image_url"]["url"], base)}
    return prompt


def _local(path: str, base: Path) -> str:
    """A relative path from the data file's directory; data: and other URLs as they are."""
    return path if path.startswith("data:") or REMOTE.match(path) else str(base / path)


def load_sft_data(path: str | Path, encoder: ChatEncoder | Tokenizer, chat: bool = True, max_len: int = 2048,
                  turn: Turn = "template") -> list[Sample]:
    """Examples as samples (prompt ids and images, response ids); bad lines raise naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SFT data file {path} does not exist")
    out, skipped = [], 0
    # lines end at "\n" only: splitlines() also splits at U+2028, U+0085..., which JSON strings hold raw
    for n, line in enumerate(jsonl_lines(path), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: not valid JSON ({exc})") from None
        prompt, response = row.get("prompt") if isinstance(row, dict) else None, row.get("response") if isinstance(row, dict) else None
        if not isinstance(response, str) or not isinstance(prompt, (str, list)):
            raise ValueError(f"{path}:{n}: needs a string 'response' and a 'prompt' (string or chat messages)")
        if isinstance(prompt, list) and not all(map(_is_message, prompt)):
            raise ValueError(f"{path}:{n}: a chat prompt is a list of messages, each with a string 'role' and a "
                             "'content' (a string, or a list of parts; null with 'tool_calls')")
        try:
            sample = sft_example(_resolve_images(prompt, path.parent), response, encoder, chat, turn)
        except (ValueError, TypeError, OSError) as exc:  # an unreadable image, images for a text model, a template
            raise ValueError(f"{path}:{n}: {exc}") from None
        if not sample.prompt_ids:  # (chat=False): the first response token would have nothing to follow
            raise ValueError(f"{path}:{n}: the prompt encodes to no tokens")
        if len(sample.prompt_ids) + len(sample.response_ids) > max_len:
            skipped += 1
            continue
        if sample.multimodal is not None:  # the images as the row names them, not their pixels: see `sft_loss`
            sample.prompt, sample.multimodal = prompt, None
        out.append(sample)
    if skipped:
        print(f"sft: skipped {skipped} examples longer than max_len={max_len}", file=sys.stderr)
    if not out:
        raise ValueError(f"{path}: no usable examples")
    return out


def _is_message(m) -> bool:
    content = m.get("content", ...) if isinstance(m, dict) else ...
    return (isinstance(m, dict) and isinstance(m.get("role"), str)
            and (isinstance(content, (str, list)) or (content is None and "tool_calls" in m)))


def sft_loss(model: DecoderLM, samples: list[Sample], images: list[MultimodalPrompt | None] | None = None
             ) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy of the response tokens, and their number. `images`: the samples'
    `example_images`, when they were built ahead (by default they are built here)."""
    width = max(len(s.prompt_ids) + len(s.response_ids) for s in samples)
    ids = torch.zeros(len(samples), width, dtype=torch.long, device=model.device)
    labels = torch.full_like(ids, -100)
    for i, s in enumerate(samples):
        seq = s.prompt_ids + s.response_ids
        ids[i, :len(seq)] = torch.tensor(seq)
        labels[i, len(s.prompt_ids) - 1:len(seq) - 1] = torch.tensor(s.response_ids)  # position p predicts p + 1
    images = images if images is not None else [example_images(model, s) for s in samples]
    hidden = model.forward_padded(ids, images) if any(m is not None for m in images) else model.forward_padded(ids)
    logits = model.compute_logits(hidden).float()
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
    return loss, int((labels != -100).sum())


def example_images(model: DecoderLM, sample: Sample) -> MultimodalPrompt | None:
    """A sample's images and positions: those it holds (`sft_example`), or, for an example
    `load_sft_data` read, its messages' images preprocessed now, for this batch only (as rollouts
    rebuild theirs from the prompt): a data set holds no example's pixel values."""
    if sample.multimodal is not None or not isinstance(sample.prompt, list):
        return sample.multimodal
    return images_prompt(sample.prompt_ids, sample.prompt, model.vlm_config, model.image_config)


class SFTTrainer:
    """The SFT loop's state: model, optimizer and schedule, the data order. `step()` runs one step."""

    def __init__(self, model: DecoderLM, data: list[Sample], cfg: SFTConfig, turn: Turn = "template"):
        """`turn`: what the examples of `data` train on (sft_example), saved with the state."""
        self.model, self.data, self.cfg, self.turn = model, data, cfg, turn
        self.steps = max(1, math.ceil(len(data) * cfg.epochs / cfg.samples_per_step))
        if cfg.freeze_vision:
            freeze_vision(model)
        self.optimizer, self.scheduler = make_optimizer(trainable(model), cfg.optim(), self.steps)
        self.rng = random.Random(cfg.seed)
        self.order: list[int] = []
        self.step_count = 0
        self._ahead: tuple[list[int], Future] | None = None  # the next batch's images, preprocessed meanwhile
        # only for a loaded data set (a list): a sequence that builds its examples on access (the demo's)
        # would build every one here, and each looked-ahead one twice
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="sft-images") if isinstance(data, list) and any(
            s.multimodal is None and isinstance(s.prompt, list) for s in data) else None
        torch.manual_seed(cfg.seed)

    def _next(self, k: int) -> list[int]:
        """The next k indices of the data order (epochs shuffled as they are reached; drawing one
        early, to look ahead, gives the same order)."""
        while len(self.order) < k:
            epoch = list(range(len(self.data)))
            self.rng.shuffle(epoch)
            self.order += epoch
        return self.order[:k]

    def _images(self, indices: list[int], batch: list[Sample]) -> list[MultimodalPrompt | None]:
        """The batch's images: preprocessed during the previous step when it looked ahead, else now."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == indices:
            return ahead[1].result()
        return [example_images(self.model, s) for s in batch]

    def _look_ahead(self) -> None:
        """Preprocess the next batch's images on a worker thread while this step computes."""
        if self._pool is not None and self.step_count + 1 < self.steps:
            indices = self._next(self.cfg.samples_per_step)
            self._ahead = indices, self._pool.submit(lambda: [example_images(self.model, self.data[i]) for i in indices])

    def step(self) -> dict[str, float]:
        """One optimizer step on the next `samples_per_step` examples; the mean token loss and more."""
        start = time.perf_counter()
        indices = self._next(self.cfg.samples_per_step)
        self.order = self.order[self.cfg.samples_per_step:]
        batch = [self.data[i] for i in indices]
        images = self._images(indices, batch)
        self._look_ahead()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        total, tokens = 0.0, 0
        for idx in micro_batches(batch, self.cfg.max_tokens_per_microbatch):
            with autocast(self.model.device, self.cfg.autocast):
                loss, n = sft_loss(self.model, [batch[i] for i in idx], [images[i] for i in idx])
            loss.backward()
            total, tokens = total + loss.detach().item(), tokens + n
        for p in trainable(self.model):
            if p.grad is not None:
                p.grad /= max(tokens, 1)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable(self.model), self.cfg.grad_clip))
        lr = self.scheduler.get_last_lr()[0]
        finite = step_if_finite(self.optimizer, grad_norm)  # (sft_run stops a run whose step was not)
        self.scheduler.step()
        self.model.eval()
        self.step_count += 1
        seconds = time.perf_counter() - start
        return {"loss": total / max(tokens, 1), "lr": lr, "grad_norm": grad_norm, "nonfinite_updates": int(not finite),
                "train_tokens_per_s": tokens / max(seconds, 1e-9)}

    @torch.no_grad()
    def held_out_loss(self, samples: list[Sample]) -> float:
        """Mean response-token loss on `samples` (no update)."""
        total, tokens = 0.0, 0
        for idx in micro_batches(samples, self.cfg.max_tokens_per_microbatch):
            with autocast(self.model.device, self.cfg.autocast):
                loss, n = sft_loss(self.model, [samples[i] for i in idx])
            total, tokens = total + float(loss), tokens + n
        return total / max(tokens, 1)

    @functools.cached_property
    def data_key(self) -> str:
        """The data's fingerprint, computed when a checkpoint needs it (data drawn on access, as the demo
        VLM's, are not all drawn for nothing)."""
        return data_fingerprint(self.data)

    def state_dict(self) -> dict:
        return {"step": self.step_count, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": self.rng.getstate(), "order": self.order,
                "data": self.data_key, "turn": self.turn}

    def load_state_dict(self, state: dict) -> None:
        """ValueError when the run was trained on other data: its saved order indexes that data (a
        rewritten file resumed on other examples, or failed with an IndexError)."""
        if state.get("data", self.data_key) != self.data_key:
            raise ValueError(f"the training data are not those this run was trained on ({len(self.data)} examples now, "
                             "other contents): resume with the same data file, or add --overwrite to start afresh")
        self.step_count = state["step"]
        resume_optimizer(self.optimizer, self.scheduler, lambda: self.optimizer.load_state_dict(state["optimizer"]),
                         state["scheduler"])
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.order = list(state["order"])


def data_fingerprint(data: list[Sample]) -> str:
    """A digest of the examples' token ids, in order (a resumed run must see the data it started with)."""
    digest = hashlib.sha1(str(len(data)).encode())
    for s in data:
        digest.update(array("q", s.prompt_ids).tobytes() + b"|" + array("q", s.response_ids).tobytes() + b";")
    return digest.hexdigest()


def train_sft(model: DecoderLM, data: list[Sample], cfg: SFTConfig, log=None) -> list[float]:
    """Train in place, no run directory (tests, building small models); the per-step mean token loss."""
    trainer, losses, start = SFTTrainer(model, data, cfg), [], time.perf_counter()
    for step in range(1, trainer.steps + 1):
        losses.append(trainer.step()["loss"])
        if log is not None:
            log(step, trainer.steps, losses[-1], time.perf_counter() - start)
    return losses
