"""One-shot retrieval: the most similar solved task by BM25 (GEAK uses rank_bm25's BM25Okapi
with whitespace tokens, top 1; geak.md §1.3).

Departures: tokens are lower-cased identifiers and numbers (code and prose both split well on
them); the corpus is our other tasks' experts (families other than the query's, so that
log_softmax's expert is not softmax's answer) plus the kernels this run has solved for any other
task, whatever its family (the run's own work, not an answer key: a published suite puts all its
tasks in one family), instead of TritonBench's crawled GitHub snippets. Like GEAK, the first
iteration queries with the task's instruction and later ones with the previous attempt's code.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field

TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+")


def tokens(text: str) -> list[str]:
    return [t.lower() for t in TOKEN.findall(text)]


@dataclass
class Document:
    id: str
    family: str
    instruction: str
    code: str
    solved: bool = False
    """A kernel this run solved (the family exclusion is for experts only)."""
    counts: Counter = field(default_factory=Counter)
    length: int = 0


class BM25:
    def __init__(self, k1: float = 1.5, b: float = 0.75):
        self.k1, self.b = k1, b
        self.docs: list[Document] = []
        self.df: Counter = Counter()

    def add(self, doc_id: str, family: str, instruction: str, code: str, solved: bool = False) -> None:
        terms = tokens(f"{instruction}\n{code}")
        doc = Document(doc_id, family, instruction, code, solved, Counter(terms), len(terms))
        self.docs.append(doc)
        self.df.update(doc.counts.keys())

    def best(self, query: str, exclude_ids: set[str] = frozenset(), exclude_family: str | None = None
             ) -> Document | None:
        """The highest-scoring document not excluded (by id, or an expert of `exclude_family`); None
        when none scores above zero."""
        if not self.docs:
            return None
        n = len(self.docs)
        mean_length = sum(d.length for d in self.docs) / n
        terms = set(tokens(query))
        best, best_score = None, 0.0
        for doc in self.docs:
            if doc.id in exclude_ids or (exclude_family and doc.family == exclude_family and not doc.solved):
                continue
            score = 0.0
            for term in terms & doc.counts.keys():
                idf = math.log(1 + (n - self.df[term] + 0.5) / (self.df[term] + 0.5))
                f = doc.counts[term]
                score += idf * f * (self.k1 + 1) / (f + self.k1 * (1 - self.b + self.b * doc.length / mean_length))
            if score > best_score:
                best, best_score = doc, score
        return best
