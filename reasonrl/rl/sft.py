"""`reasonrl sft`: supervised fine-tuning on JSONL prompt/response pairs, loss on the response only.

Each line is {"prompt": str | [chat messages], "response": str}. A string prompt becomes a user
message rendered with the tokenizer's chat template (`chat=False`: plain concatenation); the
response is followed by the end-of-sequence token, so the policy learns to stop.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from reasonrl.models.loader import save_model
from reasonrl.models.model import DecoderLM
from reasonrl.models.tokenizer import Tokenizer
from reasonrl.rl.batch import micro_batches
from reasonrl.rollout.sample import Sample


@dataclass(slots=True)
class SFTConfig:
    epochs: float = 1.0
    lr: float = 1e-4
    weight_decay: float = 0.0
    samples_per_step: int = 32
    max_tokens_per_microbatch: int = 8192
    warmup_steps: int = 0
    grad_clip: float = 1.0
    max_len: int = 2048
    """Examples longer than this (prompt + response) are skipped, and counted."""
    chat: bool = True
    seed: int = 0


def sft_example(prompt: str | list[dict], response: str, tokenizer: Tokenizer, chat: bool = True) -> Sample:
    """One example as a sample: the prompt (a string, or chat messages) through the chat template
    with its generation prompt, or encoded as it is when not `chat`; the response ends with EOS."""
    if chat:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    else:
        prompt_ids = tokenizer.encode(prompt if isinstance(prompt, str) else json.dumps(prompt))
    eos = list(tokenizer.eos_token_ids[:1])
    return Sample(prompt_ids=prompt_ids, response_ids=tokenizer.encode(response, add_special_tokens=False) + eos)


def load_sft_data(path: str | Path, tokenizer: Tokenizer, chat: bool = True, max_len: int = 2048) -> list[Sample]:
    """Examples as samples (prompt ids, response ids); bad lines raise naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SFT data file {path} does not exist")
    out, skipped = [], 0
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: not valid JSON ({exc})") from None
        prompt, response = row.get("prompt") if isinstance(row, dict) else None, row.get("response") if isinstance(row, dict) else None
        if not isinstance(response, str) or not isinstance(prompt, (str, list)):
            raise ValueError(f"{path}:{n}: needs a string 'response' and a 'prompt' (string or chat messages)")
        sample = sft_example(prompt, response, tokenizer, chat)
        if len(sample.prompt_ids) + len(sample.response_ids) > max_len:
            skipped += 1
            continue
        out.append(sample)
    if skipped:
        print(f"sft: skipped {skipped} examples longer than max_len={max_len}", file=sys.stderr)
    if not out:
        raise ValueError(f"{path}: no usable examples")
    return out


def sft_loss(model: DecoderLM, samples: list[Sample]) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy of the response tokens, and their number."""
    width = max(len(s.prompt_ids) + len(s.response_ids) for s in samples)
    ids = torch.zeros(len(samples), width, dtype=torch.long, device=model.device)
    labels = torch.full_like(ids, -100)
    for i, s in enumerate(samples):
        seq = s.prompt_ids + s.response_ids
        ids[i, :len(seq)] = torch.tensor(seq)
        labels[i, len(s.prompt_ids) - 1:len(seq) - 1] = torch.tensor(s.response_ids)  # position p predicts p + 1
    logits = model.compute_logits(model.forward_padded(ids)).float()
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
    return loss, int((labels != -100).sum())


def train_sft(model: DecoderLM, data: list[Sample], cfg: SFTConfig, log=None) -> list[float]:
    """Train in place; returns the per-step mean token loss."""
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    steps = max(1, math.ceil(len(data) * cfg.epochs / cfg.samples_per_step))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(cfg.warmup_steps, 1)) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    order: list[int] = []
    losses = []
    model.train()
    start = time.perf_counter()
    for step in range(1, steps + 1):
        while len(order) < cfg.samples_per_step:
            epoch = list(range(len(data)))
            rng.shuffle(epoch)
            order += epoch
        batch, order = [data[i] for i in order[:cfg.samples_per_step]], order[cfg.samples_per_step:]
        opt.zero_grad(set_to_none=True)
        total, tokens = 0.0, 0
        for idx in micro_batches(batch, cfg.max_tokens_per_microbatch):
            loss, n = sft_loss(model, [batch[i] for i in idx])
            loss.backward()
            total, tokens = total + loss.detach().item(), tokens + n
        for p in model.parameters():
            if p.grad is not None:
                p.grad /= max(tokens, 1)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        losses.append(total / max(tokens, 1))
        if log is not None:
            log(step, steps, losses[-1], time.perf_counter() - start)
    model.eval()
    return losses


def run_sft(model_dir: str | Path, data_path: str | Path, out_dir: str | Path, cfg: SFTConfig, device=None) -> Path:
    from reasonrl.models.loader import load_model

    model = load_model(model_dir, device)
    tokenizer = Tokenizer.from_dir(model_dir)
    data = load_sft_data(data_path, tokenizer, cfg.chat, cfg.max_len)

    def log(step, steps, loss, seconds):
        if step == steps or step % max(1, steps // 20) == 0:
            print(f"sft step {step}/{steps} | loss {loss:.4f} | {seconds:.0f}s", file=sys.stderr, flush=True)

    train_sft(model, data, cfg, log)
    return save_model(model, out_dir, tokenizer)
