"""Model calls of a stage: asked through the shared OpenAI-compatible client, every answer recorded.

`ask(ctx, name, client, calls)` returns the answer row of every call, asking the endpoint only
for the calls that `calls/NAME.jsonl` lacks, and appending each answer as it arrives: a run
killed mid-stage asks again only for the calls that had no answer yet (those in flight when it
died). Concurrency, retries with backoff and jitter on 429/5xx/timeouts, Retry-After, the
per-request timeout and the dead-endpoint check are the client's (reasonrl/eval/client.py).

What cannot be answered:
- A request the server refuses for itself (400, 413 or 422: a prompt longer than the
  context, a bad parameter) is recorded as `rejected` with the server's message, and its problem
  is dropped with that message. Refusals are recorded once the stage's calls are done, or when
  the endpoint fails (`EndpointError`) if it has answered some call of the stage: then the
  refusals are the requests' own. Rejections are free (nothing was generated), so a run that
  stops early records none and a rerun asks again.
- A call still failing after its retries is not recorded: the stage ends with `StageIncomplete`
  and a rerun asks again. An endpoint that fails every request ends it with `EndpointError`, and
  so does one that refused every request and never answered a call of the stage (a context too
  short for the prompt plus max_tokens): nothing is recorded, and the fixed server is asked again.

Each call is seeded from (run seed, stage, call key): a server that honours seeds (vLLM, SGLang,
`reasonrl serve`) answers a rerun the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

from reasonrl.engine.sampling_params import stable_seed
from reasonrl.envs.base import Prompt
from reasonrl.eval.client import EndpointError, OpenAIClient, RefusedAll
from reasonrl.eval.jobs import Completion, Failure, Job
from reasonrl.progress import Progress

from .sections import LLMSection

Row = dict[str, Any]


class Stopped(Exception):
    """A stop was asked for (Ctrl-C, SIGTERM); what finished is saved."""


class StageIncomplete(RuntimeError):
    """Some calls of a stage failed after their retries; a rerun asks for them again."""


@dataclass(frozen=True)
class Call:
    key: str  # unique within the stage: problem id, plus the call's index when a problem has several
    messages: list[dict[str, str]]


class Client(Protocol):
    def probe(self) -> None: ...

    def generate(self, jobs: list[Job]): ...


def llm_client(section: LLMSection) -> OpenAIClient:
    return OpenAIClient(section.client_config(), section.max_tokens, section.temperature, section.top_p,
                        section.extra_body)


def ask(ctx, name: str, client: Callable[[], Client], calls: list[Call]) -> dict[str, Row]:
    """The answer row of every call in `calls` (see the module docstring); `client()` is only
    built (and probed) when some answer is missing. Raises Stopped, StageIncomplete or EndpointError."""
    ledger = ctx.ledger("calls", name)
    todo = list({c.key: c for c in calls if c.key not in ledger}.values())
    if todo:
        _run(ctx, name, client(), todo, ledger)
    return {c.key: ledger.rows[c.key] for c in calls}


def _run(ctx, name: str, client: Client, todo: list[Call], ledger) -> None:
    client.probe()
    jobs = [Job(Prompt(c.key, c.messages), 0, stable_seed(ctx.recipe.run.seed, name, c.key)) for c in todo]
    rejected: list[Row] = []
    failed: list[Failure] = []
    line = ProgressLine(name, len(jobs), ctx.recipe.run.progress)
    batches = client.generate(jobs)
    try:
        for batch in batches:
            ledger.append(answer_row(job, out) for job, out in batch if not isinstance(out, Failure))
            rejected += [{"key": job.prompt.id, "rejected": out.error} for job, out in batch
                         if isinstance(out, Failure) and out.rejected]
            failed += [out for _, out in batch if isinstance(out, Failure) and not out.rejected]
            line.update(len(batch), len(failed))
            if ctx.stop():
                break
    except EndpointError as exc:
        # A server that answered calls of this stage (in this run or before) refused these for their own
        # sake; one that never did and refused all has wrong settings (its context), so nothing is recorded.
        trusted = any("rejected" not in row for row in ledger.rows.values())
        if not (trusted and isinstance(exc, RefusedAll)):  # else the stage ends as usual, its refusals recorded
            message = (f"{exc}. The {len(ledger)} answered calls of {name} are saved in {ledger.path}; rerun the same "
                       "command to resume")
            if trusted:
                ledger.append(rejected)
            raise EndpointError(message) from None
    finally:
        batches.close()  # cancels what is still in flight
        line.close()
    if ctx.stop():
        raise Stopped(name)
    ledger.append(rejected)
    if failed:
        raise StageIncomplete(f"{name}: {len(failed)} of {len(jobs)} calls failed after their retries (first error: "
                              f"{failed[0].error}); the others are saved: rerun the same command to ask again")


def answer_row(job: Job, out: Any) -> Row:
    if isinstance(out, Completion):
        return {"key": job.prompt.id, "text": out.text, "finish_reason": out.finish_reason,
                "prompt_tokens": out.prompt_tokens, "completion_tokens": out.tokens}
    return {"key": job.prompt.id, **out.row()}  # e.g. an embedding


class ProgressLine(Progress):
    """`base.solve: 120/400 calls done (38.7 s, 3.1/s, 2 failed)` on stderr (reasonrl.progress.Progress)."""

    def __init__(self, name: str, total: int, enabled: bool):
        super().__init__(name, total, "calls", every=None, final=True, enabled=enabled)
        self.failed = 0

    def update(self, done: int, failed: int) -> None:
        """`done` more calls answered (an increment); `failed` so far (a count)."""
        self.done, self.failed = self.done + done, failed
        super().update(self.done)

    def detail(self) -> str:
        return f"{self.rate():.1f}/s" + (f", {self.failed} failed" if self.failed else "")
