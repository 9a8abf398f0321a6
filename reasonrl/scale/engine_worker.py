"""`EngineWorker`: one `LLMEngine` stepping in its own thread, the body of a rollout engine actor.

The driver never waits for a step: it submits requests, and `collect(wait)` hands back what
finished plus, for every running request, the tokens and behaviour log-probs generated since the
last call. The driver keeps that progress, so when this actor dies its samples resume elsewhere
from their partial tokens (engine_pool.py). Only the stepping thread touches the engine: submissions,
aborts and weight loads are queued to it and run between two steps. A plain class (tested without Ray); `EnginePool` makes it an actor.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Callable

import torch

from reasonrl.engine.config import EngineConfig
from reasonrl.engine.llm_engine import LLMEngine
from reasonrl.engine.sampling_params import SamplingParams
from reasonrl.engine.sequence import CompletionOutput

Progress = dict[str, tuple[list[int], list[float]]]  # request -> (new token ids, their log-probs)


class EngineWorker:
    def __init__(self, model_path: str, engine_cfg: EngineConfig, device: str, dtype: str | None, threads: int,
                 reserve_bytes: int = 0):
        """`reserve_bytes`: what a trainer rank on the same GPU allocates after this engine starts (its
        weights and optimizer state), kept out of the default KV budget (`beside_trainer`)."""
        from reasonrl.models import Tokenizer, load_model
        from reasonrl.rollout.backend import beside_trainer

        torch.set_num_threads(threads)
        policy = load_model(model_path, device, dtype, max_len=engine_cfg.max_model_len)
        config = beside_trainer(engine_cfg.for_checkpoint(model_path), policy.device, reserve_bytes)
        self.engine = LLMEngine(policy, Tokenizer.from_dir(model_path), config)
        self.version = 0
        self.finished: list[tuple[str, CompletionOutput]] = []
        self.reported: dict[str, int] = {}  # request -> tokens already handed to the driver
        self.ops: list[tuple[Callable, Future]] = []  # run by the stepping thread, between two steps
        self.refused: list[str] = []  # requests add_request refused: the next collect raises them to the driver
        self.failure: BaseException | None = None  # what ended the stepping thread, raised to every later call
        self.cond = threading.Condition()
        self.stopped = False
        self.thread = threading.Thread(target=self._loop, name="reasonrl-engine", daemon=True)
        self.thread.start()

    # ---- the stepping thread: the only one that touches the engine ----------------------------
    def _loop(self) -> None:
        try:
            self._steps()
        except BaseException as exc:  # past step isolation (the scheduler, a draft): every caller hears of it
            with self.cond:
                self.failure, ops, self.ops = exc, self.ops, []
                self.cond.notify_all()
            for _, future in ops:
                future.set_exception(exc)

    def _steps(self) -> None:
        while True:
            with self.cond:
                while not (self.stopped or self.ops or self.engine.has_unfinished()):
                    self.cond.wait()
                if self.stopped:
                    return
                ops, self.ops = self.ops, []
            for fn, future in ops:
                try:
                    future.set_result(fn())
                except Exception as exc:  # raised in the caller's thread
                    future.set_exception(exc)
            if self.engine.has_unfinished():
                done = [(o.request_id, o.outputs[0]) for o in self.engine.step() if o.finished]
                with self.cond:
                    self.finished += done
                    self.cond.notify_all()

    def _call(self, fn: Callable):
        """Run `fn` in the stepping thread between two steps; its result."""
        future: Future = Future()
        with self.cond:
            if self.failure is not None:
                raise RuntimeError(f"this engine actor's stepping thread failed: {self.failure!r}") from self.failure
            self.ops.append((fn, future))
            self.cond.notify_all()
        return future.result()

    # ---- what the driver calls --------------------------------------------------------------
    def submit(self, requests: list[tuple[str, object, SamplingParams, list[int], list[float]]]) -> None:
        """Start requests `(key, prompt, params, output_ids, output_logprobs)`: resumed from their partial
        tokens and behaviour log-probs when `output_ids` is not empty."""
        def add():  # the driver does not wait for this call: a refusal is raised by the next collect
            for key, prompt, params, output_ids, output_logprobs in requests:
                resume = {"output_ids": output_ids, "output_logprobs": output_logprobs} if output_ids else {}
                try:
                    self.engine.add_request(key, prompt, params, **resume)
                except ValueError as exc:  # e.g. a prompt past max_model_len: this request only
                    with self.cond:
                        self.refused.append(str(exc))
                    continue
                self.reported[key] = len(output_ids)
        self._call(add)

    def collect(self, wait: float = 0.05) -> tuple[list[tuple[str, CompletionOutput]], Progress]:
        """Requests finished since the last call (waiting up to `wait` s for one), and the new tokens of
        the running ones."""
        with self.cond:
            if not self.finished:
                self.cond.wait(wait)
            refused, self.refused = self.refused, []
        if refused:  # as an in-process engine raises at submit
            raise ValueError("; ".join(refused))
        return self._call(self._harvest)

    def _harvest(self) -> tuple[list[tuple[str, CompletionOutput]], Progress]:
        with self.cond:
            done, self.finished = self.finished, []
        for key, _ in done:
            self.reported.pop(key, None)
        progress: Progress = {}
        for key, request in self.engine.requests.items():
            seq, n = request.seqs[0], self.reported.get(key, 0)
            if len(seq.output_ids) > n:
                progress[key] = (seq.output_ids[n:], seq.output_logprobs[n:])
                self.reported[key] = len(seq.output_ids)
        return done, progress

    def abort_all(self) -> list[tuple[str, CompletionOutput]]:
        """Stop every request between two steps; finished and aborted ones come back with their tokens."""
        def abort():
            aborted = [(o.request_id, o.outputs[0]) for o in self.engine.abort_all()]
            with self.cond:
                done, self.finished = self.finished, []
            self.reported = {}
            return done + aborted
        return self._call(abort)

    def set_weights(self, tensors: dict[str, torch.Tensor], version: int) -> int:
        """Load a policy's state dict (the prefix cache is reset with it); returns the version now served."""
        def load():
            self.engine.set_weights(tensors)
            self.version = version
            return version
        return self._call(load)

    def join_broadcast(self, address: str, rank: int, world: int, device: str) -> None:
        """Join the weight-broadcast group (weight_sync.py) as `rank` (runs beside the stepping thread)."""
        from reasonrl.scale.weight_sync import WeightBroadcast

        self.broadcast = WeightBroadcast(address, rank, world, device)

    def weight_dtypes(self) -> dict[str, torch.dtype]:
        """The dtype of every tensor of the served model (what a broadcast to it must send)."""
        return {name: t.dtype for name, t in self.engine.model.state_dict().items()}

    def receive_weights(self, version: int) -> int:
        """Take part in one broadcast of new weights, then load them between two steps."""
        tensors = self.broadcast.receive(self.engine.model.state_dict())
        return self.set_weights(tensors, version)

    def sleep(self) -> None:
        self._call(self.engine.sleep)

    def wake(self) -> None:
        self._call(self.engine.wake)

    def stats(self) -> dict[str, float]:
        return self._call(lambda: {**self.engine.stats(), "version": self.version})

    def close(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()
        self.thread.join(timeout=10)
