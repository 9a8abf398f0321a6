"""`RemotePool`: several inference servers behind one rollout backend (`rollout.remote_url: URL,URL,...`).

APRIL runs over them as over one engine: each request goes to the server with the fewest
outstanding tokens (balance.py), so over-provisioned groups and resumed partial samples spread over
all of them; `abort_all` aborts on every server and returns each request with its tokens; `sync`
writes the new weights once to the shared `sync_dir` and every server loads them.
"""

from __future__ import annotations

import logging

import httpx

from reasonrl.models.chat import token_ids
from reasonrl.rollout.backend import Finished, RolloutBackend
from reasonrl.rollout.balance import LeastOutstanding
from reasonrl.rollout.remote import RemoteBackend

log = logging.getLogger(__name__)


class RemotePool(RolloutBackend):
    def __init__(self, servers: list[RemoteBackend]):
        self.servers = servers
        self.balance = LeastOutstanding(list(range(len(servers))))
        self.failing: set[int] = set()  # servers whose last answer was a failure: new requests go elsewhere

    def submit(self, key, prompt_ids, params, output_ids, output_logprobs) -> None:
        cost = len(token_ids(prompt_ids)) + params.max_tokens
        server = self.balance.place(key, cost, avoid=self.failing)  # a resubmitted sample leaves a failing server
        self.servers[server].submit(key, prompt_ids, params, output_ids, output_logprobs)

    def poll(self) -> list[Finished]:
        wait = 0.05 / len(self.servers)
        finished = [item for s in self.servers for item in s.poll(wait=wait)]
        for key, out in finished:
            server = self.balance.done(key)
            if server is not None and out.finish_reason == "error":
                self.failing.add(server)
            elif server is not None:
                self.failing.discard(server)
        return finished

    def abort_all(self) -> list[Finished]:
        finished = [item for s in self.servers for item in s.abort_all()]
        for key, _ in finished:
            self.balance.done(key)
        return finished

    @property
    def num_running(self) -> int:
        return sum(s.num_running for s in self.servers)

    def sync(self, policy, version: int) -> None:
        self.servers[0].sync(policy, version)  # writes sync_dir once, then every server reads it
        for server in self.servers[1:]:
            server.load(version)

    def stats(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        answers = []
        for i, s in enumerate(self.servers):
            try:
                answers.append(s.stats())
            except (httpx.HTTPError, RuntimeError) as exc:  # counters of the others: a down server's samples fail alone
                log.warning("server %s gave no stats: %s", s.base_url, exc)
                self.failing.add(i)
        if not answers:
            raise ConnectionError(f"no server answered: {', '.join(s.base_url for s in self.servers)}")
        for answer in answers:
            for k, v in answer.items():
                if isinstance(v, (int, float)):
                    totals[k] = totals.get(k, 0) + v
        return totals

    def close(self) -> None:
        for s in self.servers:
            s.close()
