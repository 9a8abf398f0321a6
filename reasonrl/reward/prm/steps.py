"""Step segmentation: where a response's steps are, as text spans, for scoring and for labelling.

Two ways to cut a response, chosen by `StepFormat.split`:

- `delimiter`: the text between occurrences of `delimiter` ("\\n\\n" for prose solutions, as
  Qwen2.5-Math-PRM does; " " for the `sums` task, whose worked response
  `4+7=11 11+2=13 13+9=22 \\boxed{22}` then has the steps `4+7=11`, `11+2=13`, `13+9=22` and
  `\\boxed{22}`: every running total, and the final answer, is one step);
- `tags`: the text inside each `open_tag ... close_tag` pair (`<step>...</step>`).

Model output is untrusted and nothing here raises on it: steps that are empty or only whitespace
are dropped (two delimiters in a row make no step; `<step></step>` is no step, nor is text outside
the tags), a response without any delimiter (or, in tag mode, without any open tag) is one step, an
empty response has no steps. A step's `end` is where
the response prefix through that step ends, so a completer can continue from `text[:end]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple


@dataclass
class StepFormat:
    split: Literal["delimiter", "tags"] = "delimiter"
    """How a response is cut into steps: at each delimiter, or the text inside each tag pair."""
    delimiter: str = "\n\n"
    """split=delimiter: the text between steps ("\\n\\n" for prose; " " for `sums`, one step per running total).
    Unset, `prm label` takes its environment's, `prm train` the one its labelled rows were cut with."""
    open_tag: str = "<step>"
    """split=tags: what opens a step."""
    close_tag: str = "</step>"
    """split=tags: what closes a step."""

    def __post_init__(self):
        if self.split not in ("delimiter", "tags"):
            raise ValueError(f"StepFormat.split must be 'delimiter' or 'tags', got {self.split!r}")
        if self.split == "delimiter" and not self.delimiter:
            raise ValueError("StepFormat.delimiter must be a non-empty string")
        if self.split == "tags" and not (self.open_tag and self.close_tag):
            raise ValueError("StepFormat.open_tag and close_tag must be non-empty strings")


class Step(NamedTuple):
    text: str  # the step, stripped of surrounding whitespace
    end: int  # response[:end] is the response through this step (a completer continues from there)


def split_steps(response: str, fmt: StepFormat) -> list[Step]:
    """The non-empty steps of `response`, in order."""
    if not isinstance(response, str):
        return []
    marker = fmt.open_tag if fmt.split == "tags" else fmt.delimiter
    if marker not in response:  # no delimiter or tag at all: the whole response is one step
        return [Step(response.strip(), len(response.rstrip()))] if response.strip() else []
    return _tagged(response, fmt) if fmt.split == "tags" else _delimited(response, fmt.delimiter)


def _delimited(response: str, delimiter: str) -> list[Step]:
    out, start = [], 0
    while start <= len(response):
        at = response.find(delimiter, start)
        stop = len(response) if at < 0 else at
        piece = response[start:stop]
        if piece.strip():
            out.append(Step(piece.strip(), start + len(piece.rstrip())))
        if at < 0:
            break
        start = at + len(delimiter)
    return out


def _tagged(response: str, fmt: StepFormat) -> list[Step]:
    out, start = [], 0
    while True:
        opened = response.find(fmt.open_tag, start)
        if opened < 0:
            return out
        inner = opened + len(fmt.open_tag)
        closed = response.find(fmt.close_tag, inner)
        if closed < 0:  # an unclosed last tag (a truncated response): its text is still a step
            closed = len(response)
        piece = response[inner:closed]
        end = min(closed + len(fmt.close_tag), len(response))
        if piece.strip():
            out.append(Step(piece.strip(), end))
        start = end


def step_texts(response: str, fmt: StepFormat) -> list[str]:
    return [s.text for s in split_steps(response, fmt)]
