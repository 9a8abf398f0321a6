"""Associative recall: the long-context retrieval task `reasonrl bench kv` measures KV formats on,
and the small model trained here to solve it.

A prompt is K key -> value pairs of random tokens, a separator and one query key; the answer is
that key's value, two tokens:

    <bos> k17 v3 v60  k5 v41 v41  ...  k58 v7 v12  <sep> k5   ->   v41 v41

Keys are distinct within a prompt, and so are the first value tokens, so each answer token is
found by one look-up ("where did the current token occur before, and what followed it?": an
induction head), and the second answer token is decoded from the cache after the first, so even a
format that only compresses after prefill (eviction) is read. Chance is 1 / num_values^2.

Items are drawn from a seeded `random.Random` per split ("train", "eval", "calib", "monitor"): the
same seed gives the same items, and the evaluation items are never trained on (different streams;
a repeat would need the same ~200 random tokens). Training sequences hold several queries after the
separator (the loss is on their value tokens only) and a random number of pairs; a curriculum
grows that number up to the evaluation length as the look-up is learnt (`TrainConfig`).

The default model (`recall_model_config`): Qwen2 architecture, 2 layers, hidden 64, 8 heads of
dimension 64, all of them KV heads (MHA: TaDA's head-mean costs 1/kv_heads of the cache, so with
2 KV heads it alone would be half of a 16-bit dense cache). It reaches ~99% on 64-pair prompts
after 800 steps (measured: 521 s on a 2-core CPU shared with other jobs; the look-up is found
around step 200, at 8 pairs). Training runs on one intra-op thread (see `train_recall`).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F

from reasonrl.models.config import ModelConfig
from reasonrl.models.model import DecoderLM

PAD, BOS, SEP, EOS = 0, 1, 2, 3
SPECIALS = ["<pad>", "<bos>", "<sep>", "<eos>"]


@dataclass(frozen=True)
class RecallTask:
    pairs: int = 64
    """Key -> value pairs in an evaluation prompt (its length is 1 + pairs * (1 + value_len) + 2)."""
    num_keys: int = 64
    num_values: int = 64
    value_len: int = 2
    min_pairs: int = 4
    """Training prompts hold at least this many pairs."""
    queries: int = 16
    """Queries per training sequence."""

    def __post_init__(self):
        if self.num_keys < self.pairs or self.num_values < self.pairs:
            raise ValueError(f"RecallTask: pairs={self.pairs} needs num_keys and num_values >= pairs "
                             f"(keys and first value tokens are distinct), got {self.num_keys}, {self.num_values}")
        if not 1 <= self.min_pairs <= self.pairs or self.value_len < 1 or self.queries < 1:
            raise ValueError(f"RecallTask: need 1 <= min_pairs <= pairs, value_len >= 1, queries >= 1; got {self}")

    @property
    def vocab_size(self) -> int:
        return len(SPECIALS) + self.num_keys + self.num_values

    @property
    def prompt_len(self) -> int:
        return 1 + self.pairs * (1 + self.value_len) + 2

    def key(self, i: int) -> int:
        return len(SPECIALS) + i

    def value(self, j: int) -> int:
        return len(SPECIALS) + self.num_keys + j

    def tokens(self) -> list[str]:
        """The vocabulary as words (the saved checkpoint's word-level tokenizer)."""
        return SPECIALS + [f"k{i}" for i in range(self.num_keys)] + [f"v{j}" for j in range(self.num_values)]

    def context(self, rng: random.Random, pairs: int) -> tuple[list[int], dict[int, list[int]]]:
        """<bos> then `pairs` (key, value) runs -> (token ids, key -> value tokens)."""
        keys = rng.sample(range(self.num_keys), pairs)
        firsts = rng.sample(range(self.num_values), pairs)
        ids, table = [BOS], {}
        for k, first in zip(keys, firsts):
            value = [self.value(first)] + [self.value(rng.randrange(self.num_values)) for _ in range(self.value_len - 1)]
            table[self.key(k)] = value
            ids += [self.key(k)] + value
        return ids, table


@dataclass(frozen=True)
class RecallItem:
    prompt_ids: list[int]
    answer_ids: list[int]


def recall_items(task: RecallTask, n: int, seed: int = 0, split: str = "eval") -> list[RecallItem]:
    """`n` prompts of exactly `task.pairs` pairs, each asking one of its keys. Each split ("eval",
    "calib", ...) is its own random stream, and none is the training stream."""
    if split == "train":
        raise ValueError("recall_items: 'train' is the training stream; use eval, calib or another name")
    rng = random.Random(f"recall-{split}:{seed}")
    items = []
    for _ in range(n):
        ids, table = task.context(rng, task.pairs)
        query = rng.choice(list(table))
        items.append(RecallItem(ids + [SEP, query], table[query]))
    return items


def train_batch(task: RecallTask, rng: random.Random, batch_size: int, max_pairs: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """-> input ids and labels (B, T), right-padded; labels are -100 except on the query values
    (label t is the token at t + 1). Each row holds min_pairs..max_pairs (default task.pairs) pairs."""
    rows, targets = [], []
    for _ in range(batch_size):
        ids, table = task.context(rng, rng.randint(task.min_pairs, max_pairs or task.pairs))
        target = [-100] * len(ids) + [-100]
        ids = ids + [SEP]
        for query in rng.choices(list(table), k=task.queries):
            ids += [query] + table[query]
            target += [-100] + table[query]  # target[t]: the token at t, when it is a query's value
        rows.append(ids)
        targets.append(target[1:] + [-100])
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [PAD] * (width - len(r)) for r in rows])
    labels = torch.tensor([t + [-100] * (width - len(t)) for t in targets])
    return ids, labels


def recall_model_config(task: RecallTask, num_layers: int = 2, hidden_size: int = 64, num_heads: int = 8,
                        num_kv_heads: int = 8, head_dim: int = 64, family: str = "qwen2") -> ModelConfig:
    from reasonrl.models.tiny import ARCH

    return ModelConfig.from_dict({
        "architectures": [ARCH[family]], "vocab_size": task.vocab_size, "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size, "num_hidden_layers": num_layers, "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads, "head_dim": head_dim, "max_position_embeddings": 2 * task.prompt_len + 64,
        "tie_word_embeddings": True, "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "eos_token_id": EOS,
        "bos_token_id": BOS})


@dataclass
class TrainConfig:
    steps: int = 800
    batch_size: int = 32
    lr: float = 5e-3
    warmup_steps: int = 20
    decay_fraction: float = 0.2
    """Constant learning rate after warm-up, then linear decay to zero over this last share of steps."""
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    start_pairs: int = 8
    """Curriculum: training prompts hold min_pairs..max_pairs pairs, max_pairs starting here and
    growing 1.5x whenever the held-out accuracy at max_pairs reaches `grow_at` (checked every
    `check_every` steps), up to the task's pairs. The look-up is learnt first on short prompts,
    where it is found in a few hundred steps, and then carries over to long ones."""
    grow_at: float = 0.8
    check_every: int = 25
    bf16: bool = False
    """Forward and backward under bf16 autocast (fp32 weights and optimizer): about 2x faster on a
    CPU with bf16 instructions, for the wide-attention models."""
    seed: int = 0


def train_recall(model: DecoderLM, task: RecallTask, cfg: TrainConfig, log=None) -> list[float]:
    """AdamW on freshly generated batches with the curriculum above; returns the losses.
    `log(step, steps, loss, accuracy, max_pairs, seconds)` at every check (accuracy: teacher-forced,
    on 64 held-out items of max_pairs pairs)."""
    threads = torch.get_num_threads()
    # One intra-op thread: at these sizes a thread pool's synchronisation costs more than it saves,
    # and on a shared (oversubscribed) CPU a step is several times slower with two.
    torch.set_num_threads(1)
    try:
        return _train(model, task, cfg, log)
    finally:
        torch.set_num_threads(threads)


def _train(model: DecoderLM, task: RecallTask, cfg: TrainConfig, log) -> list[float]:
    rng = random.Random(f"recall-train:{cfg.seed}")
    torch.manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    decay = max(1, int(cfg.decay_fraction * cfg.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / max(cfg.warmup_steps, 1), 1.0, (cfg.steps - s) / decay))
    max_pairs = max(task.min_pairs, min(task.pairs, cfg.start_pairs))
    losses, start = [], time.perf_counter()
    for step in range(1, cfg.steps + 1):
        model.train()
        ids, labels = train_batch(task, rng, cfg.batch_size, max_pairs)
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            logits = model.compute_logits(model.forward_padded(ids.to(model.device)))
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.to(model.device).flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % cfg.check_every == 0 or step == cfg.steps:
            held_out = recall_items(replace(task, pairs=max_pairs), 64, seed=cfg.seed + step, split="monitor")
            acc = teacher_forced_accuracy(model, held_out)
            if log is not None:
                recent = losses[-cfg.check_every:]
                log(step, cfg.steps, sum(recent) / len(recent), acc, max_pairs, time.perf_counter() - start)
            if acc >= cfg.grow_at:
                max_pairs = min(task.pairs, math.ceil(1.5 * max_pairs))
    model.eval()
    return losses


@torch.no_grad()
def teacher_forced_accuracy(model: DecoderLM, items: list[RecallItem]) -> float:
    """Share of items whose every answer token is the argmax given the true earlier ones (one dense
    forward, no cache: the quick check used while training)."""
    model.eval()
    ids = torch.tensor([it.prompt_ids + it.answer_ids[:-1] for it in items], device=model.device)
    logits = model.compute_logits(model.forward_padded(ids))
    n = len(items[0].answer_ids)
    pred = logits[:, -n:].argmax(-1).cpu()
    answers = torch.tensor([it.answer_ids for it in items])
    return (pred == answers).all(-1).float().mean().item()


def task_record(task: RecallTask, cfg: ModelConfig, train: TrainConfig) -> dict:
    """What a cached checkpoint was trained for; reused only when this matches exactly."""
    model = {k: cfg.raw[k] for k in ("architectures", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                     "num_key_value_heads", "head_dim", "intermediate_size")}
    return {"task": asdict(task), "model": model, "train": asdict(train)}
