"""Scoring solutions with a PRM: encode (prompt, steps) with a separator after every step, run many
solutions per forward pass, read one score per step; aggregate step scores into a solution score.

    scorer = PRMScorer(prm, tokenizer)
    [s.scores for s in scorer.score([(messages, "4+7=11 11+2=13 \\\\boxed{13}")])]  # [[0.97, 0.95, 0.93]]
    aggregate(scores, "min")

Model output is untrusted and scoring never raises on it: steps are cut as `steps.py` says (a
response without a delimiter is one step, empty steps are dropped, an empty response has no
steps), a step longer than `max_step_tokens` tokens is cut to them (only its first 2 x
(`max_step_tokens` + 1) x the vocabulary's longest token characters are tokenized, so a 10 MB step
costs what a short one does), the separator's text inside a response is dropped rather than taken
for a separator, and steps past `max_len` tokens are not seen (nor tokenized) and score 0.0
(`StepScores.seen` counts the others); a lone surrogate (a JSON escape) in a response or a prompt
(text or a message's content) is read as '?'. An aggregate of no steps is 0.0.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from reasonrl.eval.jobs import render_text
from reasonrl.models.chat import ChatEncoder, multimodal, token_ids
from reasonrl.models.qwen2_5_vl.prompt import MultimodalPrompt
from reasonrl.models.tokenizer import Tokenizer
from reasonrl.reward.prm.model import ProcessRewardModel
from reasonrl.reward.prm.steps import step_texts
from reasonrl.rl.batch import token_batches

PromptLike = str | list[dict] | list[int] | MultimodalPrompt  # chat messages, text, or encoded

STEPS_PER_BATCH = 64
"""Steps tokenized per call: a response of a million steps is read only as far as `max_len` reaches."""


@dataclass
class Encoded:
    ids: list[int]  # prompt, then each seen step's tokens followed by the separator
    positions: list[int]  # index of each seen step's separator in ids
    num_steps: int  # steps of the response, seen or not
    multimodal: MultimodalPrompt | None = None  # a vision-language prompt's images
    plain: list[int] | None = None  # confidence PRMs: prompt and seen steps joined as written (no separators)
    spans: list[tuple[int, int]] | None = None  # each seen step's tokens in `plain`: plain[a:b]
    features: torch.Tensor | None = None  # confidence PRMs: (seen steps, 2), once computed (the reference is frozen)

    @property
    def length(self) -> int:
        """Tokens a forward pass over this solution reads: its ids, or its plain text where that is longer."""
        return max(len(self.ids), len(self.plain or ()))


@dataclass
class StepScores:
    steps: list[str]
    scores: list[float]  # P(step correct), one per step; 0.0 for steps past max_len
    seen: int  # steps the model read (the first `seen`)

    @property
    def read(self) -> list[float]:
        """The scores of the steps the model read, without the placeholders of the others."""
        return self.scores[:self.seen]

    @property
    def unread(self) -> bool:
        """Some step lies past max_len: an aggregate of `read` judges a prefix of the solution."""
        return self.seen < len(self.steps)


class PRMScorer:
    def __init__(self, prm: ProcessRewardModel, tokenizer: Tokenizer, max_tokens_per_batch: int = 16384):
        self.prm, self.tokenizer, self.cfg = prm, tokenizer, prm.cfg
        self.encoder = ChatEncoder(tokenizer, prm.backbone)
        self.max_tokens_per_batch = max_tokens_per_batch
        # no token spans more characters than its vocabulary entry has bytes (byte-level BPE)
        self.longest_token = max(map(len, tokenizer.tok.get_vocab(with_added_tokens=True)), default=1)

    # ---- encoding ---------------------------------------------------------------------------------
    def prompt_input(self, prompt: PromptLike) -> list[int] | MultimodalPrompt:
        if isinstance(prompt, MultimodalPrompt) or (isinstance(prompt, list) and prompt
                                                    and all(isinstance(t, int) for t in prompt)):
            return prompt
        if (shape := prompt_problem(prompt)) is not None:
            raise ValueError(shape)
        messages = _utf8_messages([{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt)
        if self.cfg.chat:
            return self.encoder(messages)
        return self.tokenizer.encode(render_text(messages))

    def encode(self, prompt: PromptLike, steps: Sequence[str], inputs: dict | None = None) -> Encoded:
        """Prompt tokens, then per step its tokens (at most max_step_tokens, separators removed) and a
        separator, while they fit in max_len. `inputs`: prompts already encoded, by id (a request's
        many responses to one prompt render and tokenize it once)."""
        # a normaliser may merge up to 4 characters into one: past this, no step could follow the prompt
        if _text_length(prompt) > 4 * self.cfg.max_len * self.longest_token:
            return Encoded([], [], len(steps), None)
        inputs = {} if inputs is None else inputs
        if id(prompt) not in inputs:
            inputs[id(prompt)] = self.prompt_input(prompt)
        inp = inputs[id(prompt)]
        ids, positions, sep = token_ids(inp), [], self.prm.separator_id
        if self.cfg.confidence and multimodal(inp) is not None:
            raise ValueError("this PRM reads confidence features, which are for text prompts: the prompt has images")
        # a step's first max_step_tokens tokens lie well inside this prefix (x 2: room for merges at the
        # cut and for normalization); the rest would be tokenized only to be thrown away
        chars = 2 * (self.cfg.max_step_tokens + 1) * self.longest_token
        seen: list[str] = []  # confidence PRMs: each seen step's text, as far as its tokens were kept
        for lo in range(0, len(steps), STEPS_PER_BATCH):  # batches of steps: stop tokenizing once full
            batch = [_utf8(step[:chars]) for step in steps[lo: lo + STEPS_PER_BATCH]]
            for text, piece in zip(batch, self.tokenizer.tok.encode_batch(batch, add_special_tokens=False)):
                kept = [(t, end) for t, (_, end) in zip(piece.ids, piece.offsets) if t != sep][:self.cfg.max_step_tokens]
                if len(ids) + len(kept) + 1 > self.cfg.max_len:
                    return self._encoded(inp, ids, positions, len(steps), seen)
                ids += [t for t, _ in kept] + [sep]
                positions.append(len(ids) - 1)
                if self.cfg.confidence:
                    seen.append(text[:kept[-1][1]] if kept else "")
        return self._encoded(inp, ids, positions, len(steps), seen)

    def _encoded(self, inp, ids: list[int], positions: list[int], num_steps: int, texts: list[str]) -> Encoded:
        if not self.cfg.confidence:
            return Encoded(ids, positions, num_steps, multimodal(inp))
        # the seen steps (each cut where the PRM's tokens of it end) joined as the step format writes them,
        # tokenized together (a token may straddle a step's start, as " \\" before "boxed" does); each
        # step's tokens are those overlapping its characters
        fmt = self.cfg.steps
        before, between, after = (fmt.open_tag, fmt.close_tag + fmt.open_tag, fmt.close_tag) if fmt.split == "tags" \
            else ("", fmt.delimiter, "")
        text, ranges = before, []
        for k, step in enumerate(texts):
            text += between if k else ""
            ranges.append((len(text), len(text) + len(step)))
            text += step
        piece = self.tokenizer.tok.encode(text + after, add_special_tokens=False)
        kept = [(t, off) for t, off in zip(piece.ids, piece.offsets) if t != self.prm.separator_id]
        starts, ends, prompt = [a for _, (a, _) in kept], [b for _, (_, b) in kept], token_ids(inp)
        spans = [(len(prompt) + bisect.bisect_right(ends, lo), len(prompt) + bisect.bisect_left(starts, hi))
                 for lo, hi in ranges]
        return Encoded(ids, positions, num_steps, None, prompt + [t for t, _ in kept], spans)

    # ---- scoring ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def score(self, items: Sequence[tuple[PromptLike, str]]) -> list[StepScores]:
        """Step scores of each (prompt, response), many responses per forward pass."""
        return self.score_steps([(prompt, step_texts(response, self.cfg.steps)) for prompt, response in items])

    @torch.inference_mode()
    def score_steps(self, items: Sequence[tuple[PromptLike, Sequence[str]]]) -> list[StepScores]:
        """`score` for responses already cut into steps."""
        inputs: dict = {}  # (the prompts stay alive in `items`: their ids are theirs throughout)
        encoded = [self.encode(prompt, steps, inputs) for prompt, steps in items]
        probs = self.step_probs(encoded)
        return [StepScores(list(s), p + [0.0] * (len(s) - len(p)), len(p)) for (_, s), p in zip(items, probs)]

    @torch.inference_mode()
    def step_probs(self, encoded: Sequence[Encoded]) -> list[list[float]]:
        """P(correct) at each seen step of each encoded solution."""
        out: list[list[float]] = [[] for _ in encoded]
        for idx in token_batches([e.length for e in encoded], self.max_tokens_per_batch):
            rows = [encoded[i] for i in idx if encoded[i].positions]
            if not rows:
                continue
            probs = self.logits(rows).float().softmax(-1)[:, 1].tolist()
            start = 0
            for i in (i for i in idx if encoded[i].positions):
                out[i] = probs[start:start + len(encoded[i].positions)]
                start += len(encoded[i].positions)
        return out

    def logits(self, rows: Sequence[Encoded]) -> torch.Tensor:
        """(K, 2) head logits at every seen step of `rows` (each with one at least), in one padded batch."""
        features = self.confidence(rows) if self.cfg.confidence else None
        return self.prm(*collate(rows, self.prm.device, self.tokenizer.pad_token_id), features)

    @torch.no_grad()
    def confidence(self, rows: Sequence[Encoded]) -> torch.Tensor:
        """(K, 2): per seen step, the lowest and the mean log-probability the frozen reference model gives
        its tokens, each predicted from everything before it in `Encoded.plain`. A step with no
        token (its text was only the separator's) gets -log(vocabulary size) for both, a uniform guess,
        so that it cannot look certain. Computed once per solution (kept in `Encoded.features`)."""
        todo = [e for e in rows if e.features is None]
        if todo:
            ref = self.prm.reference
            ids = torch.full((len(todo), max(len(e.plain) for e in todo)), self.tokenizer.pad_token_id, dtype=torch.long)
            for b, e in enumerate(todo):
                ids[b, :len(e.plain)] = torch.tensor(e.plain)
            ids = ids.to(ref.device)
            hidden = ref.forward_padded(ids)
            guess = -math.log(ref.config.vocab_size)
            for b, e in enumerate(todo):
                first = max(1, e.spans[0][0])  # token t is predicted at position t - 1 (a prompt has a token)
                last = max(first, e.spans[-1][1])
                logp = ref.compute_logits(hidden[b, first - 1:last - 1]).float().log_softmax(-1)
                token_logp = logp.gather(-1, ids[b, first:last, None])[:, 0].cpu()
                segments = [token_logp[max(a, first) - first:max(z, first) - first] for a, z in e.spans]
                e.features = torch.tensor([[seg.min(), seg.mean()] if len(seg) else [guess, guess] for seg in segments],
                                          dtype=torch.float32)
        return torch.cat([e.features for e in rows]).to(self.prm.device)


def collate(rows: Sequence[Encoded], device, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list | None]:
    """Right-padded ids (B, T), separator coordinates rows and cols (K,), per-row image prompts."""
    width = max(len(e.ids) for e in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for b, e in enumerate(rows):
        ids[b, :len(e.ids)] = torch.tensor(e.ids)
    r = torch.tensor([b for b, e in enumerate(rows) for _ in e.positions], dtype=torch.long)
    c = torch.tensor([p for e in rows for p in e.positions], dtype=torch.long)
    prompts = [e.multimodal for e in rows] if any(e.multimodal is not None for e in rows) else None
    return ids.to(device), r.to(device), c.to(device), prompts


# ---- aggregation ------------------------------------------------------------------------------------
def _product(scores: list[float]) -> float:
    return math.prod(scores)


AGGREGATIONS: dict[str, Callable[[list[float]], float]] = {
    "min": min,
    "mean": lambda s: sum(s) / len(s),
    "last": lambda s: s[-1],
    "product": _product,
}


def aggregate(scores: Sequence[float], name: str) -> float:
    """A solution's score from its step scores (min, mean, last or product); 0.0 for no steps."""
    if name not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {name!r}; known: {', '.join(AGGREGATIONS)}")
    return float(AGGREGATIONS[name](list(scores))) if len(scores) else 0.0


def check_aggregations(names: Any) -> list[str]:
    unknown = [n for n in names if n not in AGGREGATIONS]
    if unknown:
        raise ValueError(f"unknown aggregation(s) {', '.join(map(str, unknown))}; known: {', '.join(AGGREGATIONS)}")
    return list(names)


def _utf8(text: str) -> str:
    """Text the tokenizer accepts: a lone surrogate (a JSON escape such as \\ud800) becomes '?'."""
    return text.encode("utf-8", "replace").decode("utf-8")


def prompt_problem(prompt: Any) -> str | None:
    """Why `prompt` is not a prompt the PRM can read (text, or chat messages each with a string role and
    a string or list content), or None. A malformed prompt rendered by the chat template would be
    scored with the question left out, not refused."""
    if isinstance(prompt, str):
        return None
    if isinstance(prompt, list) and prompt and all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                                   and isinstance(m.get("content"), (str, list)) for m in prompt):
        return None
    return ("prompt must be a string or a non-empty list of chat messages, each with a string role and a string "
            f"or list content; got {str(prompt)[:80]!r}")


def _text_length(prompt: PromptLike) -> int:
    """Characters of a prompt's text (of its messages' text parts), 0 for token ids and prepared prompts."""
    if isinstance(prompt, str):
        return len(prompt)
    total = 0
    for m in prompt if isinstance(prompt, list) else []:
        content = m.get("content") if isinstance(m, dict) else None
        for part in content if isinstance(content, list) else [content]:
            text = part.get("text") if isinstance(part, dict) else part
            total += len(text) if isinstance(text, str) else 0
    return total


def _utf8_messages(messages: list[dict]) -> list[dict]:
    """Messages whose text is `_utf8`: a string content, or each text part of a list (images untouched)."""
    return [{**m, "content": _utf8_content(m["content"])} if isinstance(m, dict) and "content" in m else m
            for m in messages]


def _utf8_content(content: Any) -> Any:
    if isinstance(content, list):
        return [{**p, "text": _utf8_content(p["text"])} if isinstance(p, dict) and "text" in p else p for p in content]
    return _utf8(content) if isinstance(content, str) else content
