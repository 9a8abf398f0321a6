"""Test doubles for the kernel agent: a scripted LLM and an evaluator that returns set verdicts."""

from __future__ import annotations

from reasonrl.agents.geak.llm import Reply
from reasonrl.envs.kernels.evaluate import Verdict
from reasonrl.eval.client import EndpointError


def parse_key(key: str) -> tuple[str, int, int, str]:
    head, role = key.rsplit("/", 1)
    head, iteration = head.rsplit("/i", 1)
    task, trajectory = head.rsplit("/t", 1)
    return task, int(trajectory), int(iteration), role


def fenced(code: str) -> str:
    return f"Let me write it.\n```python\n{code}```\n"


class ScriptedLLM:
    """Generation replies from `script(task, trajectory, iteration)`; a fixed reflection. Every
    call it receives is kept in `calls`; `fail_at` makes iteration >= fail_at raise EndpointError
    (an endpoint that died mid-run)."""

    def __init__(self, script, reflection="The mask on the last block is missing; add it.", fail_at=None):
        self.script, self.reflection, self.fail_at = script, reflection, fail_at
        self.calls = []

    def complete(self, calls, on_reply=None):
        out = []
        for call in calls:
            task, trajectory, iteration, role = parse_key(call.key)
            if self.fail_at is not None and iteration >= self.fail_at:
                raise EndpointError("the endpoint went away")
            self.calls.append(call)
            if role == "reflect":
                out.append(Reply(self.reflection, tokens=12, prompt_tokens=300))
            else:
                text = self.script(task, trajectory, iteration)
                out.append(text if isinstance(text, Reply) else Reply(text, tokens=80, prompt_tokens=500))
            if on_reply is not None:
                on_reply(call, out[-1])
        return out


class FakeEvaluator:
    """Verdicts from `verdict(task, code)`; pretends to be on a GPU with timing (for the optimizer)."""

    device = "cuda"

    class config:  # noqa: N801 - mimics EvaluatorConfig's attribute
        timing = True

    def __init__(self, verdict):
        self.verdict = verdict
        self.seen = []

    def evaluate_many(self, pairs):
        self.seen += pairs
        return [self.verdict(task, code) if code else Verdict(task.id, "no_code", "no code") for task, code in pairs]
