"""`MathVerifier`: is a response's final answer equal to the reference? Never raises, never hangs.

Per item, cheapest first:
1. Extract the answer (extract.py). None, longer than `max_answer_chars`, a response longer
   than `max_response_chars`, or a non-string response: 0, no process involved.
2. Quick path (quick.py): verdicts math-verify could not disagree with, decided in-process:
   equal normal forms, plain numbers, flat sets/intervals of plain numbers.
3. A verdict already computed for the same (answer, reference) (LRU of `cache_size` entries;
   timeouts are not cached, a loaded machine should not fail an item for good).
4. math-verify in the worker pool (pool.py, equivalence.py) with a hard `timeout` per item; a
   timeout or a worker crash scores 0 and the pool carries on with a fresh worker.

`judge_many` deduplicates its batch (GRPO groups repeat answers) and spreads the rest over all
workers. The pool starts on first need and is closed by `close()`, the context manager, or at
interpreter exit.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any, Callable, Iterable

from .equivalence import math_verify_equal
from .extract import extract_answer, reference_answer
from .pool import WorkerPool
from .quick import quick_verdict

log = logging.getLogger(__name__)


class MathVerifier:
    """Scores (response, reference) pairs 1.0/0.0 with math-verify behind a hard timeout.

    Args:
        workers: worker processes (each uses one core while busy).
        timeout: seconds one item may take in a worker before the worker is killed.
        think_delimiter: if set (e.g. "</think>"), only text after it is read; a response
            without it scores 0.
        max_answer_chars: longer extracted answers score 0 without being parsed.
        max_response_chars: longer responses score 0 without being read.
        cache_size: verdicts remembered across calls (0: none).
        max_memory_mb: address space a worker may add to what it maps at start (None: no cap).
        check: the comparison run in workers, `check(pred, gold) -> bool`: a module-level
            function (or "module:name") the workers import; math-verify by default.
    """

    def __init__(
        self,
        *,
        workers: int = 2,
        timeout: float = 5.0,
        think_delimiter: str | None = None,
        max_answer_chars: int = 1000,
        max_response_chars: int = 1_000_000,
        cache_size: int = 10_000,
        max_memory_mb: int | None = 2048,
        check: Callable[[str, str], bool] | str = math_verify_equal,
    ):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        if max_answer_chars < 1 or max_response_chars < 1 or cache_size < 0:
            raise ValueError("max_answer_chars and max_response_chars must be >= 1, cache_size >= 0")
        self.think_delimiter = think_delimiter
        self.max_answer_chars, self.max_response_chars = max_answer_chars, max_response_chars
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str], bool] = OrderedDict()
        self._pool = WorkerPool(check, workers, timeout, max_memory_mb)
        self._lock = threading.Lock()
        self.counts = {"judged": 0, "no_answer": 0, "quick": 0, "cached": 0, "pooled": 0}

    # --- public API ----------------------------------------------------------------------

    def judge(self, response: Any, reference: Any) -> float:
        """1.0 if the final answer of `response` equals `reference`, else 0.0."""
        return self.judge_many([(response, reference)])[0]

    def judge_many(self, pairs: Iterable[tuple[Any, Any]]) -> list[float]:
        """`judge` over a batch, using every worker; order is kept.

        Raises RuntimeError only when workers cannot start at all (a broken install), never
        because of what is being judged."""
        return [1.0 if verdict else 0.0 for verdict in self.decide_many(pairs)]

    def decide_many(self, pairs: Iterable[tuple[Any, Any]]) -> list[bool | None]:
        """Like `judge_many`, but None where the verifier cannot decide: no answer on either side
        (nothing boxed, no "Answer:" line, unreadable input), or a check that timed out or crashed
        its worker. Callers with a fallback (an LLM judge) ask it about those."""
        pairs = list(pairs)
        with self._lock:  # one batch at a time: the pool, the cache and the counts are shared
            return self._decide_many(pairs)

    def _decide_many(self, pairs: list) -> list[bool | None]:
        verdicts: list[bool | None] = [None] * len(pairs)
        pending: dict[tuple[str, str], list[int]] = {}
        for i, pair in enumerate(pairs):
            key = self._prepare(pair)
            if isinstance(key, tuple):
                pending.setdefault(key, []).append(i)
            else:
                verdicts[i] = key
        if pending:
            keys = list(pending)
            results = self._pool.run(keys)
            self.counts["pooled"] += len(keys)
            for key, verdict in zip(keys, results):
                if verdict is not None:
                    self._remember(key, verdict)
                for i in pending[key]:
                    verdicts[i] = verdict
        self.counts["judged"] += len(pairs)
        return verdicts

    def answer(self, response: Any) -> str | None:
        """The final answer this verifier reads from `response` (None: there is none)."""
        if not isinstance(response, str) or len(response) > self.max_response_chars:
            return None
        return extract_answer(response, self.think_delimiter, self.max_answer_chars)

    @property
    def stats(self) -> dict[str, int]:
        pool = self._pool.stats
        return {**self.counts, "timeouts": pool.timeouts, "crashes": pool.crashes, "restarts": pool.restarts}

    def worker_pids(self) -> list[int]:
        return self._pool.pids()

    def start(self) -> "MathVerifier":
        """Start the workers now instead of at the first item that needs them (non-blocking)."""
        self._pool.start()
        return self

    def close(self) -> None:
        """Stop and reap the workers. A later `judge` starts fresh ones."""
        with self._lock:
            self._pool.close()

    def __enter__(self) -> "MathVerifier":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # --- internals -----------------------------------------------------------------------

    def _prepare(self, pair: Any) -> bool | None | tuple[str, str]:
        """A verdict decided here (None: no answer to compare), or the (answer, reference) key
        the pool must decide."""
        try:
            response, reference = pair
            pred = self.answer(response)
            gold = reference_answer(reference)
            if pred is None or gold is None:
                self.counts["no_answer"] += 1
                return None
            quick = quick_verdict(pred, gold)
        except Exception as exc:  # untrusted input must never stop training
            log.debug("math answer extraction failed: %r", exc)
            return None
        if quick is not None:
            self.counts["quick"] += 1
            return quick == 1.0
        cached = self._cache.get((pred, gold))
        if cached is not None:
            self._cache.move_to_end((pred, gold))
            self.counts["cached"] += 1
            return cached
        return (pred, gold)

    def _remember(self, key: tuple[str, str], verdict: bool) -> None:
        if self.cache_size:
            self._cache[key] = verdict
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
