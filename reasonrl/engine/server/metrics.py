"""Prometheus metrics for `GET /metrics` (prometheus_client, one registry per app).

HTTP requests by route and status (counted by `MetricsMiddleware`), the engine's state at scrape
time (waiting and running sequences, KV blocks in use, tokens generated and per second,
preemptions, speculative decoding's acceptance and the adaptive policy's tree size per batch
size when it is on), and per-request latency histograms: time to first token, time per output
token after the first, end to end.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reasonrl.engine.async_engine import AsyncEngine
from reasonrl.engine.sequence import RequestOutput

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)
TREE_TOKENS = "spec_tree_tokens_at_batch_"
PER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5)


class Metrics:
    """Also the engine's `Observer`: told each request's first-token and finish times."""

    def __init__(self, model_name: str):
        self.registry = CollectorRegistry(auto_describe=True)
        labels = {"model_name": model_name}
        self.http = Counter("reasonrl_http_requests", "HTTP requests answered, by route and status",
                            ["route", "status"], registry=self.registry)
        self.ttft = Histogram("reasonrl_time_to_first_token_seconds", "From arrival in the engine to the first new token",
                              ["model_name"], buckets=LATENCY_BUCKETS, registry=self.registry).labels(**labels)
        self.tpot = Histogram("reasonrl_time_per_output_token_seconds", "Per output token after the first",
                              ["model_name"], buckets=PER_TOKEN_BUCKETS, registry=self.registry).labels(**labels)
        self.e2e = Histogram("reasonrl_request_latency_seconds", "From arrival in the engine to the last token",
                             ["model_name"], buckets=LATENCY_BUCKETS, registry=self.registry).labels(**labels)
        self.finishes = Counter("reasonrl_request_finished", "Requests ended in the engine, by finish reason",
                                ["model_name", "finish_reason"], registry=self.registry)
        self.model_name = model_name

    def collect_from(self, engine: AsyncEngine) -> None:
        """Report `engine`'s state at every scrape."""
        self.registry.register(_EngineCollector(engine, self.model_name))

    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def finished(self, out: RequestOutput, seconds: float, first_token_seconds: float | None,
                 new_tokens: int) -> None:
        self.e2e.observe(seconds)
        for o in out.outputs:
            self.finishes.labels(self.model_name, o.finish_reason or "unknown").inc()
        if first_token_seconds is not None and new_tokens > 1:  # generated here: a resume's given tokens are not
            self.tpot.observe((seconds - first_token_seconds) / (new_tokens - 1))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector:
    """The engine's counters and gauges, read from its last published snapshot at scrape time."""

    def __init__(self, engine: AsyncEngine, model_name: str):
        self.engine, self.labels = engine, [model_name]

    def describe(self):
        return []

    def collect(self):
        s, ok = dict(self.engine.snapshot), self.engine.health()[0]
        gauges = {"waiting_sequences": ("Sequences waiting for a place in a batch", s.get("waiting", 0)),
                  "running_sequences": ("Sequences being decoded", s.get("running", 0)),
                  "kv_blocks_used": ("KV cache blocks in use", s.get("kv_blocks_used", 0)),
                  "kv_blocks_total": ("KV cache blocks", s.get("kv_blocks_total", 0)),
                  "kv_usage_ratio": ("Fraction of the KV cache in use",
                                     s.get("kv_blocks_used", 0) / max(1, s.get("kv_blocks_total", 1))),
                  "kv_capacity_tokens": ("Tokens the KV cache holds", s.get("kv_capacity_tokens", 0)),
                  "generation_tokens_per_second": ("Tokens generated per second, last ~15 s",
                                                   self.engine.tokens_per_second()),
                  "healthy": ("1 when the engine can serve", int(ok))}
        counters = {"generation_tokens": ("Tokens generated", s.get("generated_tokens", 0)),
                    "preemptions": ("Sequences preempted for lack of KV blocks", s.get("preemptions", 0))}
        if "spec_rounds" in s:
            counters.update({"spec_draft_tokens": ("Draft tokens proposed", s["spec_draft_tokens"]),
                             "spec_emitted_tokens": ("Tokens emitted by verification rounds", s["spec_emitted_tokens"]),
                             "spec_rounds": ("Verification rounds", s["spec_rounds"]),
                             "spec_steps_without_trees": ("Decode steps the adaptive policy ran without draft trees",
                                                          s.get("spec_steps_without_trees", 0))})
            gauges["spec_accepted_length"] = ("Mean tokens emitted per verification round", s["spec_accepted_length"])
        for name, (doc, value) in gauges.items():
            g = GaugeMetricFamily(f"reasonrl_{name}", doc, labels=["model_name"])
            g.add_metric(self.labels, float(value))
            yield g
        for name, (doc, value) in counters.items():
            c = CounterMetricFamily(f"reasonrl_{name}", doc, labels=["model_name"])
            c.add_metric(self.labels, float(value))
            yield c
        trees = {k.removeprefix(TREE_TOKENS): v for k, v in s.items() if k.startswith(TREE_TOKENS)}
        if trees:  # the adaptive policy's current tree size per batch-size bucket (0: speculation off there)
            g = GaugeMetricFamily("reasonrl_spec_tree_tokens", "Draft tokens per sequence the adaptive policy runs "
                                  "at this batch-size bucket (0: speculation off)", labels=["model_name", "batch_bucket"])
            for bucket, tokens in trees.items():
                g.add_metric([*self.labels, bucket], float(tokens))
            yield g


class MetricsMiddleware:
    """Counts every HTTP response by route (the matched route's path; unknown paths as "other",
    so random URLs cannot grow the label set) and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: set[str]):
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in self.routes else "other"

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.http.labels(route, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)
