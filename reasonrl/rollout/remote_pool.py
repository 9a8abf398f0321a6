"""`RemotePool`: several inference servers behind one rollout backend (`rollout.remote_url: URL,URL,...`).

APRIL runs over them as over one engine: each request goes to the server with the fewest
outstanding tokens (balance.py), so over-provisioned groups and resumed partial samples spread over
all of them; `abort_all` aborts on every server and returns each request with its tokens; `sync`
writes the new weights once to the shared `sync_dir` and every server loads them.
"""

from __future__ import annotations

from reasonrl.models.chat import token_ids
from reasonrl.rollout.backend import Finished, RolloutBackend
from reasonrl.rollout.balance import LeastOutstanding
from reasonrl.rollout.remote import RemoteBackend


class RemotePool(RolloutBackend):
    def __init__(self, servers: list[RemoteBackend]):
        self.servers = servers
        self.balance = LeastOutstanding(list(range(len(servers))))

    def submit(self, key, prompt_ids, params, output_ids, output_logprobs) -> None:
        cost = len(token_ids(prompt_ids)) + params.max_tokens
        self.servers[self.balance.place(key, cost)].submit(key, prompt_ids, params, output_ids, output_logprobs)

    def poll(self) -> list[Finished]:
        wait = 0.05 / len(self.servers)
        finished = [item for s in self.servers for item in s.poll(wait=wait)]
        for key, _ in finished:
            self.balance.done(key)
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
        for s in self.servers:
            for k, v in s.stats().items():
                if isinstance(v, (int, float)):
                    totals[k] = totals.get(k, 0) + v
        return totals

    def close(self) -> None:
        for s in self.servers:
            s.close()
