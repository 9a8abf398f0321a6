"""Samples from a local checkpoint through the in-process engine.

Every job is submitted at once and the engine batches them (continuous batching, prefix
caching: a problem's samples share its prompt blocks). The samples of one problem with
consecutive indices go in one request with n > 1 whose seed is the first sample's; the engine
draws sample i of a request with `seed + i`, which is exactly the job's seed, so a resumed run
that asks for samples 3..7 alone gets what the uninterrupted run got.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

from reasonrl.engine.llm_engine import LLMEngine
from reasonrl.engine.sampling_params import SamplingParams
from reasonrl.models.chat import ChatEncoder, ModelInput

from .jobs import Completion, Failure, Job, render_text

Result = tuple[Job, Completion | Failure]


class LocalModel:
    def __init__(self, path: str | Path, *, chat: bool, max_tokens: int, temperature: float, top_p: float,
                 engine_kwargs: dict | None = None, template_kwargs: dict | None = None):
        options = dict(engine_kwargs or {})
        device, dtype = options.pop("device", None), options.pop("dtype", None)
        if not Path(path).is_dir():
            raise FileNotFoundError(f"checkpoint directory {path} does not exist")
        self.engine = LLMEngine.from_pretrained(path, device, dtype, **options)
        self.tokenizer = self.engine.tokenizer
        if self.tokenizer is None:
            raise ValueError(f"{path} has no tokenizer.json: evaluation needs one to encode prompts")
        if chat and not self.tokenizer.chat_template:
            raise ValueError(f"{path} has no chat template: evaluate it with chat=False (plain-text prompts)")
        self.chat = chat
        self.encoder = ChatEncoder(self.tokenizer, self.engine.model, template_kwargs)  # images too, for a VLM
        self.sampling = dict(max_tokens=max_tokens, temperature=temperature, top_p=top_p)

    def generate(self, jobs: Sequence[Job]) -> Iterator[list[Result]]:
        """Finished samples after each engine step (often an empty batch)."""
        runs: dict[str, list[Job]] = {}
        failed: list[Result] = []
        for i, run in enumerate(_consecutive_runs(jobs)):
            rid = f"eval-{i}"
            params = SamplingParams(n=len(run), seed=run[0].seed, **self.sampling)
            try:
                self.engine.add_request(rid, self._encode(run[0]), params)
            except ValueError as exc:  # e.g. a prompt longer than max_model_len: this problem only
                failed += [(job, Failure(str(exc), rejected=True)) for job in run]  # asking again: the same answer
                continue
            runs[rid] = run
        if failed:
            yield failed
        try:
            while self.engine.has_unfinished():
                batch = []
                for out in self.engine.step():
                    if out.finished:
                        run = runs.pop(out.request_id)
                        batch += [(run[o.index], _result(o, out.error)) for o in out.outputs]
                yield batch
        finally:  # interrupted: free the engine for whoever uses it next
            self.engine.abort_all()

    def _encode(self, job: Job) -> ModelInput:
        if self.chat:
            return self.encoder(job.prompt.messages)
        return self.tokenizer.encode(render_text(job.prompt.messages))


def _result(output, error: str | None) -> Completion | Failure:
    """A sample the engine failed (finish_reason "error": its partial text is not an answer) is a
    Failure, not recorded, as a remote server's 500 is: a rerun asks for it again."""
    if output.finish_reason == "error":
        return Failure(f"the engine failed this request: {error or 'no reason given'}")
    return Completion(output.text, len(output.token_ids), output.finish_reason)


def _consecutive_runs(jobs: Sequence[Job]) -> list[list[Job]]:
    """Jobs grouped per problem into runs of consecutive sample indices (and seeds)."""
    by_problem: dict[str, list[Job]] = {}
    for job in jobs:
        by_problem.setdefault(job.prompt.id, []).append(job)
    runs = []
    for group in by_problem.values():
        group.sort(key=lambda j: j.sample)
        run = [group[0]]
        for job in group[1:]:
            if job.sample == run[-1].sample + 1 and job.seed == run[-1].seed + 1:
                run.append(job)
            else:
                runs.append(run)
                run = [job]
        runs.append(run)
    return runs
