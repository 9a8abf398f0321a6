"""A judgement's scores read as expectations over the judge's digit probabilities, not as written.

The judge writes each score as "0.75" or "1.00", one token per character, greedily; a written score
throws away how sure the judge was, and a small judge writes few distinct values (the two-stage
judge of the generator's images wrote alignment 1.00 for three images in four, docs/benchmarks.md),
so a group of images scored alike gives GRPO no advantage. Read instead, at the positions where the
judge wrote the score, the expected value of

    p(1) * 1.00 + p(0) * (0.1 E[d1 | "0."] + 0.01 E[d2 | "0.", d1*])

where p(.) is the judge's probability of the integer digit (renormalised over 0 and 1), E[d | ...]
the mean of its distribution over the ten digits in that place, and d1* the most likely first
decimal (the greedy path: for a score written "0.xy" these are the judgement's own rows; for one
written "1.00" the "0." branch is run, two more short forwards). A score of 1 can only be 1.00, so
that branch needs no digits. Not in ImageDoctor (which parses the text); the technique is Q-Align's
(Wu et al. 2023, arXiv 2312.17090: a score as the probability-weighted mean of rating tokens).

Untrusted text stays untrusted: a score that `parse_judgement` does not read (missing, out of
range, given twice) is None here too, and a score written in any other form than d.dd (a judge
that wrote "0.8") keeps its written value.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from reasonrl.reward.imagedoctor.judgement import ASPECTS, MAX_CHARS, answer_span, parse_judgement

_DIGITS = re.compile(r"(" + "|".join(ASPECTS.values()) + r") score:[ \t]*([01])\.([0-9])([0-9])(?![0-9.eE])")
_NAMES = {v: k for k, v in ASPECTS.items()}


def digit_ids(tokenizer) -> torch.Tensor | None:
    """The ten digits' token ids, or None where a digit is not one token (no expectation can be read)."""
    ids = [tokenizer.encode(str(d), add_special_tokens=False) for d in range(10)]
    return None if any(len(i) != 1 for i in ids) else torch.tensor([i[0] for i in ids])


def score_places(tokenizer, response: list[int]) -> tuple[dict[str, float | None], dict[str, int]]:
    """(the written scores, as `parse_judgement` reads them; for each score written as d.dd, the index
    in `response` of its integer digit). Scores not written as one token per character have no index."""
    pieces = [tokenizer.decode([t]) for t in response]
    text = "".join(pieces)
    if text != tokenizer.decode(response):  # characters split across tokens: read the text only
        return parse_judgement(tokenizer.decode(response)).scores, {}
    written = parse_judgement(text).scores
    span = answer_span(text[:MAX_CHARS])  # the block the parser read its scores from
    starts = np.cumsum([0] + [len(p) for p in pieces])
    places: dict[str, int] = {}
    for m in _DIGITS.finditer(text, *span) if span else ():
        aspect = _NAMES[m.group(1)]
        token = int(np.searchsorted(starts, m.start(2), side="right")) - 1
        if (written[aspect] is not None and aspect not in places and token + 3 < len(pieces)
                and pieces[token:token + 4] == [m.group(2), ".", m.group(3), m.group(4)]):
            places[aspect] = token
    return written, places


@torch.no_grad()
def expected_scores(doctor, tokenizer, prompts: list, responses: list[list[int]], batch: int = 8) -> list[dict[str, float | None]]:
    """Per judgement, each aspect's expected score (module docstring); a written score where no
    digits can be read (all of them with a tokenizer whose digits are not one token each), None where
    the text has none."""
    digits = digit_ids(tokenizer)
    values = torch.arange(10, dtype=torch.float32)
    read = [score_places(tokenizer, r) for r in responses]
    out = [dict(written) for written, _ in read]
    if digits is None:  # digits span several tokens: the written scores (JudgeScorer refuses such a judge)
        return out
    # the judgement's own rows: p(integer digit), and along the "0." path its two decimals
    rows = [(i, aspect, len(prompts[i].input_ids) + at) for i, (_, places) in enumerate(read) for aspect, at in places.items()]
    seqs = [list(p.input_ids) + list(r) for p, r in zip(prompts, responses)]
    logits = _logits_at(doctor, prompts, seqs, {(i, pos + k) for i, _, pos in rows for k in (-1, 1, 2)}, batch)
    branch = []
    for i, aspect, pos in rows:
        p = torch.softmax(logits[i, pos - 1][digits[:2]], -1)  # the row before predicts the integer digit
        if seqs[i][pos] == int(digits[0]):
            out[i][aspect] = _value(p, logits[i, pos + 1][digits], logits[i, pos + 2][digits], values)
        else:
            branch.append((i, aspect, pos, p))
    if branch:  # written 1.00: the "0." branch, then its most likely first decimal
        first = [seqs[i][:pos] + [int(digits[0]), seqs[i][pos + 1]] for i, _, pos, _ in branch]
        d1 = _logits_at(doctor, [prompts[i] for i, *_ in branch], first, {(k, len(s) - 1) for k, s in enumerate(first)}, batch)
        d1 = [d1[k, len(s) - 1][digits] for k, s in enumerate(first)]
        second = [s + [int(digits[int(d.argmax())])] for s, d in zip(first, d1)]
        d2 = _logits_at(doctor, [prompts[i] for i, *_ in branch], second, {(k, len(s) - 1) for k, s in enumerate(second)}, batch)
        for k, (i, aspect, _, p) in enumerate(branch):
            out[i][aspect] = _value(p, d1[k], d2[k, len(second[k]) - 1][digits], values)
    return out


def _value(p_int: torch.Tensor, d1_logits: torch.Tensor, d2_logits: torch.Tensor, values: torch.Tensor) -> float:
    frac = 0.1 * float(torch.softmax(d1_logits, -1) @ values) + 0.01 * float(torch.softmax(d2_logits, -1) @ values)
    return float(p_int[1]) + float(p_int[0]) * frac


def _logits_at(doctor, prompts: list, seqs: list[list[int]], wanted: set[tuple[int, int]], batch: int) -> dict:
    """{(row, position): vocabulary logits} of the judge's language model run on `seqs` (row i
    beginning with prompts[i]); only rows with a wanted position are run, the heatmap head never."""
    from reasonrl.reward.imagedoctor.evaluate import padded

    out = {}
    needed = sorted({r for r, _ in wanted})
    for lo in range(0, len(needed), batch):
        part = needed[lo:lo + batch]
        hidden = doctor.backbone.forward_padded(padded([seqs[i] for i in part]), [prompts[i] for i in part])
        for k, i in enumerate(part):
            for pos in sorted(p for r, p in wanted if r == i):
                out[i, pos] = doctor.backbone.lm_head(hidden[k, pos]).float()
    return out
