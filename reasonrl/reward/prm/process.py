"""Process rewards in RL: a PRM's step scores turned into per-token advantages, next to the outcome's.

Paper: DeepSeekMath (arXiv 2402.03300), sec. 4.1.3, GRPO with process supervision: every step's
reward is normalised over the group (mean and std over all steps of all samples of one prompt), and
a token's advantage is the sum of the normalised rewards of the steps that end at or after it.
Athena-PRM (arXiv 2506.09532) is where the PRM comes from.

Where this departs from it:
- The process advantage is added, times `coef`, to the outcome advantage (the estimator's, e.g.
  GRPO's), so outcome and process rewards train together; the paper uses process supervision alone.
- Steps are cut from the response text by the PRM's step format and mapped to response tokens by
  decoding prefixes: a step ends at the first token whose prefix covers the step's text. Tokens
  after the last step (e.g. the end-of-sequence token), and those of steps past the PRM's `max_len`
  (which it did not read), get no process part; a response with no step gets none at all. A group's std is the unbiased one, with eps, like the outcome estimator's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from reasonrl.config import finite_numbers
from reasonrl.reward.prm.steps import split_steps


@dataclass
class ProcessRewardConfig:
    prm: str | None = None
    """A PRM directory (`reasonrl prm train`): its step scores add per-token advantages (none: outcome only)."""
    coef: float = 1.0
    """Weight of the process advantage added to the outcome advantage."""
    eps: float = 1e-6
    """Added to the group's std of step rewards."""

    def __post_init__(self):
        finite_numbers(self, at_least={"coef": 0}, prefix="process.")


def step_token_ends(decode, response_ids: Sequence[int], char_ends: Sequence[int]) -> list[int]:
    """For each step's end (a character offset of the response text, ascending), the index of the
    response token that completes it: the first prefix of the tokens whose text agrees with the whole
    response's up to that offset (a length test alone would take a character split across tokens,
    decoded as U+FFFD, for the finished one). `decode(ids) -> str` is the tokenizer's.

    One pass over the tokens, stopping at the last step's: linear in the tokens read (decoding every
    prefix from token 0 is quadratic: minutes and a gigabyte for a long response of short steps)."""
    ids = list(response_ids)
    full = decode(ids)
    prefixes = _prefix_agreement(decode, ids, full)
    out, k, (agreed, length) = [], 0, next(prefixes, (0, 0))
    for end in char_ends:
        while k < len(ids) - 1 and not _covers(agreed, length, end, len(full)):
            k, (agreed, length) = k + 1, next(prefixes)
        out.append(k)
    return out


def _covers(agreed: int, length: int, end: int, total: int) -> bool:
    """`text[:end] == full[:end]`, for a text of `length` characters whose first `agreed` are those of
    `full` (`total` characters long)."""
    return agreed >= end if end <= total else agreed == length == total


_MAX_PENDING = 8
"""Tokens held back at most while their text ends in U+FFFD: a UTF-8 character takes 4 bytes at most,
so more is garbage, and holding it longer would make the decode windows grow with it."""


def _prefix_agreement(decode, ids: list[int], full: str):
    """For each k, (how many leading characters the text of ids[:k+1] shares with `full`, its length).

    Decodes a short window per token, as streaming detokenizers do: the tokens last committed (as
    context, so leading-space rules and merges come out as in a whole decode) plus those not yet
    committed; a token's text is committed once it no longer ends in an incomplete character."""
    done = agreed = 0  # characters committed, and how many of them agree with `full`
    start = read = 0  # ids[start:read]: the context window; ids[read:k + 1]: pending
    context = ""
    for k in range(len(ids)):
        tail = decode(ids[start:k + 1])[len(context):]
        more = _common_prefix(tail, full, done) if agreed == done else 0
        yield agreed + more, done + len(tail)
        if not tail.endswith("\ufffd") or k + 1 - read >= _MAX_PENDING:
            done, agreed = done + len(tail), agreed + more
            start, read = read, k + 1
            context = decode(ids[start:read])


def _common_prefix(text: str, full: str, offset: int) -> int:
    """How many leading characters of `text` match `full` from `offset` on."""
    n = 0
    for a, b in zip(text, full[offset:offset + len(text)]):
        if a != b:
            break
        n += 1
    return n


def process_advantages(step_scores: Sequence[Sequence[float]], step_ends: Sequence[Sequence[int]],
                       lengths: Sequence[int], group_ids: Sequence[int], eps: float = 1e-6) -> list[list[float]]:
    """Per-token process advantages: step rewards normalised within each group, each token given the
    sum of the normalised rewards of the steps ending at or after it."""
    groups: dict[int, list[float]] = {}
    for scores, g in zip(step_scores, group_ids):
        groups.setdefault(g, []).extend(scores)
    stats = {g: _mean_std(v) for g, v in groups.items()}
    out = []
    for scores, ends, n, g in zip(step_scores, step_ends, lengths, group_ids):
        mean, std = stats[g]
        norm = [0.0 if std == 0 else (x - mean) / (std + eps) for x in scores]
        out.append(_per_token(norm, list(ends), n))
    return out


def _per_token(norm: list[float], ends: list[int], n: int) -> list[float]:
    """Token t belongs to the first step ending at or after it and gets the sum of that step's and
    every later step's reward; tokens after the last step get 0."""
    suffix = [sum(norm[i:]) for i in range(len(norm))]
    tokens, i = [], 0
    for t in range(n):
        while i < len(ends) and ends[i] < t:
            i += 1
        tokens.append(suffix[i] if i < len(ends) else 0.0)
    return tokens


def _mean_std(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return (values[0] if values else 0.0), 0.0
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


class ProcessReward:
    """Scores rollout samples with a PRM and adds their process advantages to the outcome ones."""

    def __init__(self, cfg: ProcessRewardConfig, policy_tokenizer, device=None, special_tokens: bool = False):
        """`special_tokens`: the responses' text keeps special tokens (the environment's
        `special_tokens_in_responses`, e.g. LVR's latent markers); step ends are mapped back to
        tokens through the same decoding, or their character offsets would not line up."""
        from reasonrl.reward.prm.model import load_prm
        from reasonrl.reward.prm.scoring import PRMScorer

        self.cfg = cfg
        self.decode = lambda ids: policy_tokenizer.decode(ids, skip_special_tokens=not special_tokens)
        self.scorer = PRMScorer(*load_prm(cfg.prm, device=device))

    def advantages(self, samples, outcome: Sequence[float]) -> list[list[float]]:
        """Per-token advantages: outcome advantage + coef x process advantage."""
        fmt = self.scorer.cfg.steps
        steps = [split_steps(s.response_text, fmt) for s in samples]
        scored = self.scorer.score_steps([(s.prompt.messages, [x.text for x in st]) for s, st in zip(samples, steps)])
        # steps past the PRM's max_len were not read (scored 0.0 as a placeholder): like tokens after
        # the last step they get no process part, stay out of the group's statistics and are not mapped
        ends = [step_token_ends(self.decode, s.response_ids, [x.end for x in st[:o.seen]]) if s.response_ids else []
                for s, st, o in zip(samples, steps, scored)]
        process = process_advantages([o.scores[:o.seen] for o in scored], ends,
                                     [len(s.response_ids) for s in samples],
                                     [s.group_id for s in samples], self.cfg.eps)
        return [[a + self.cfg.coef * p for p in row] for a, row in zip(outcome, process)]
