"""`LeastOutstanding`: which engine takes the next request, by outstanding tokens.

A request's cost is the tokens its engine still has to process: its prompt (with any resumed
tokens, re-prefilled) and its decode budget; it shrinks as tokens come back (`progress`) and leaves
the engine's load when the request ends (`done`). Ties go to the engine with fewer requests, then
the lower index. Shared by the Ray engine pool and the pool of HTTP servers.
"""

from __future__ import annotations


class LeastOutstanding:
    def __init__(self, engines: list[int]):
        self.load = {e: 0 for e in engines}  # outstanding tokens per engine
        self.where: dict[str, list[int]] = {}  # request -> [engine, its remaining cost]

    def place(self, key: str, cost: int, avoid=()) -> int:
        """The engine for request `key` (which then carries its cost); engines in `avoid` only when
        every engine is in it."""
        engine = min(self.load, key=lambda e: (e in avoid, self.load[e], self.count(e), e))
        self.load[engine] += cost
        self.where[key] = [engine, cost]
        return engine

    def count(self, engine: int) -> int:
        return sum(1 for e, _ in self.where.values() if e == engine)

    def keys(self, engine: int) -> list[str]:
        return sorted(k for k, (e, _) in self.where.items() if e == engine)

    def progress(self, key: str, tokens: int) -> None:
        if key in self.where:
            self.where[key][1] -= tokens
            self.load[self.where[key][0]] -= tokens

    def done(self, key: str) -> int | None:
        """Forget a finished (or aborted) request; the engine it was on."""
        if key not in self.where:
            return None
        engine, cost = self.where.pop(key)
        self.load[engine] -= cost
        return engine

    def add(self, engine: int) -> None:
        self.load.setdefault(engine, 0)

    def remove(self, engine: int) -> list[str]:
        """Drop an engine (it died); the requests it held, now unplaced."""
        keys = self.keys(engine)
        for key in keys:
            del self.where[key]
        del self.load[engine]
        return keys
