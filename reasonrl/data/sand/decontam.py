"""The decontaminate stage: keep evaluation problems, and paraphrases of them, out of the data.

SAND-Math's `decontamination.py` embeds every problem (paraphrase-multilingual-MiniLM-L12-v2),
takes the top-5 cosine neighbours among the GPQA/AIME24/AIME25/MATH test sets, and asks
Llama-3.3-70B "identical or paraphrased?" about each; any yes removes the problem. Here:

1. Always, and first (it costs nothing): word n-gram overlap. A candidate sharing any run of
   `ngram` words (lower-cased, punctuation dropped) with an evaluation problem is dropped; a
   text shorter than that is compared whole.
2. When an embedding endpoint is configured: the paper's procedure, with the endpoint's
   embeddings (evaluation problems are embedded once per run directory, keyed by their text,
   and shared by the base and hiked passes), neighbours below `min_similarity` skipped.

Departures: the n-gram pass is ours (GPT-3's 13-gram rule); a judge answer that cannot be read
drops the candidate too (a clean evaluation set matters more than one problem's yield).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from reasonrl.eval.store import jsonl_lines

from . import parse, prompts
from .calls import Call, ask, llm_client
from .embeddings import EmbeddingClient
from .problem import Problem, Verdict
from .sections import DecontamSection, api_key

_WORD = re.compile(r"\w+")
TEXT_FIELDS = ("problem", "question", "prompt")


@dataclass(frozen=True)
class EvalProblem:
    source: str  # file:line
    text: str

    @property
    def key(self) -> str:
        return hashlib.blake2b(self.text.encode(), digest_size=8).hexdigest()


def load_eval_sets(paths: list[str], field: str = "problem") -> list[EvalProblem]:
    """The problems of JSONL evaluation files (identical texts once); errors name file and line."""
    out: dict[str, EvalProblem] = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"evaluation set {path} does not exist")
        for n, line in enumerate(jsonl_lines(path), 1):
            if not line.strip():
                continue
            try:
                text = _text(json.loads(line), field)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not valid JSON ({exc})") from None
            if text is None:
                raise ValueError(f"{path}:{n}: no problem text (a string field {field!r}, or "
                                 f"{', '.join(TEXT_FIELDS)}, or chat messages)")
            item = EvalProblem(f"{path.name}:{n}", text)
            out.setdefault(item.key, item)
    return list(out.values())


def _text(row, field: str) -> str | None:
    if not isinstance(row, dict):
        return None
    for name in (field, *TEXT_FIELDS):
        value = row.get(name)
        if isinstance(value, str) and value.strip():
            return value
        if isinstance(value, list) and value and isinstance(value[-1], dict) and isinstance(value[-1].get("content"), str):
            return value[-1]["content"]
    return None


def grams(text: str, n: int) -> set[bytes]:
    words = _WORD.findall(text.lower())
    pieces = [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)] if len(words) >= n else \
        ["whole:" + " ".join(words)]
    return {hashlib.blake2b(p.encode(), digest_size=8).digest() for p in pieces}


class NgramIndex:
    def __init__(self, problems: list[EvalProblem], n: int):
        self.n = n
        self.owner: dict[bytes, EvalProblem] = {}
        for item in problems:
            for g in grams(item.text, n):
                self.owner.setdefault(g, item)

    def hit(self, text: str) -> EvalProblem | None:
        return next((self.owner[g] for g in sorted(grams(text, self.n)) if g in self.owner), None)


def decontaminate(ctx, name: str, todo: list[Problem]) -> list[Verdict]:
    cfg = ctx.recipe.decontaminate
    evals = load_eval_sets(cfg.eval_sets, cfg.eval_field)
    index = NgramIndex(evals, cfg.ngram)
    verdicts: dict[str, Verdict] = {}
    for p in todo:
        hit = index.hit(p.problem)
        if hit is not None:
            verdicts[p.id] = Verdict.drop(p, "n-gram overlap with an evaluation problem", hit.source)
    rest = [p for p in todo if p.id not in verdicts]
    if cfg.embed_base_url and evals and rest:
        verdicts.update(judged(ctx, name, rest, evals))
    return [verdicts.get(p.id) or Verdict.keep(p) for p in todo]


def embed(ctx, name: str, cfg: DecontamSection, items: list[tuple[str, str]]) -> dict[str, dict]:
    """key -> embedding row, for (key, text) items."""
    def client():
        key = api_key(cfg.embed_api_key_env or cfg.api_key_env)
        return EmbeddingClient(replace(cfg.client_config(), base_url=cfg.embed_base_url, model=cfg.embed_model,
                                       api_key=key))

    return ask(ctx, name, client, [Call(k, [{"role": "user", "content": t}]) for k, t in items])


def neighbours(ctx, name: str, cfg: DecontamSection, rest: list[Problem], evals: list[EvalProblem]):
    """(problem, [(evaluation problem, cosine)] nearest first, or None when its embedding was refused)."""
    known = embed(ctx, "eval-sets.embed", cfg, [(e.key, e.text) for e in evals])
    mine = embed(ctx, f"{name}.embed", cfg, [(p.id, p.problem) for p in rest])
    usable = [e for e in evals if "embedding" in known[e.key]]
    sizes = {len(known[e.key]["embedding"]) for e in usable}
    if len(sizes) > 1:  # the endpoint changed models mid-way: neighbours would be meaningless
        raise ValueError(f"the embeddings of the evaluation sets have {len(sizes)} different sizes ({sorted(sizes)}); "
                         f"delete {ctx.out / 'calls' / 'eval-sets.embed.jsonl'} to embed them again")
    matrix = _unit(np.array([known[e.key]["embedding"] for e in usable], dtype=np.float64)) if usable else None
    for p in rest:
        row = mine[p.id]
        if "embedding" not in row or matrix is None or len(row["embedding"]) != matrix.shape[1]:
            yield p, None
            continue
        sims = matrix @ _unit(np.array([row["embedding"]], dtype=np.float64))[0]
        top = np.argsort(-sims, kind="stable")[:cfg.top_k]
        yield p, [(usable[i], float(sims[i])) for i in top if sims[i] >= cfg.min_similarity]


def judged(ctx, name: str, rest: list[Problem], evals: list[EvalProblem]) -> dict[str, Verdict]:
    cfg = ctx.recipe.decontaminate
    pairs = list(neighbours(ctx, name, cfg, rest, evals))
    calls = [Call(f"{p.id}/{e.key}", prompts.same_problem(p.problem, e.text)) for p, near in pairs if near
             for e, _ in near]
    answers = ask(ctx, name, lambda: llm_client(cfg), calls)
    out = {}
    for p, near in pairs:
        if near is None:
            out[p.id] = Verdict.drop(p, "no usable embedding", "refused by the endpoint, or of another size")
            continue
        for e, sim in near:
            answer = answers[f"{p.id}/{e.key}"]
            if "rejected" in answer:
                out[p.id] = Verdict.drop(p, "judge request rejected by the server", answer["rejected"])
                break
            same, why = parse.yes_no(answer["text"], answer["finish_reason"])
            if same is None:
                out[p.id] = Verdict.drop(p, "decontamination judge output unreadable", f"{e.source}: {why}")
                break
            if same:
                out[p.id] = Verdict.drop(p, "paraphrase of an evaluation problem (judge)", f"{e.source} (cosine {sim:.3f})")
                break
    return out


def _unit(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)
