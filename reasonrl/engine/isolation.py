"""Step isolation: a request whose part of a step raises fails alone; everyone else's step completes.

`LLMEngine.step` hands its batch to `run_isolated`. The whole batch runs first (the only cost
when nothing fails). If running it raises, the batch is split in two halves between requests,
in scheduled order, and each half runs on its own, recursively, until a failing request runs
alone: that request is failed (finish_reason "error", its blocks freed) and the others finish
their step as if the scheduler had batched them apart.

Rerunning part of a batch is exact: a sequence's rows write keys and values only into its own
new slots and read its own context, so a retry rewrites whatever a failed attempt left there. A
KV format that keeps bookkeeping of its writes (tada and kivi's staging slots) undoes the failed
attempt's first (`KVFormat.rollback`); spark does not yet, so there a failure fails the step.
One dependency crosses sequences: a sequence admitted in this step may reuse full prefix blocks
that another sequence computes in this same step (block_manager.py registers blocks before the
forward). When that other sequence is removed from the step, those blocks were never computed
right: they leave the prefix cache, and the sequences that read them go back to the waiting
queue to compute them themselves (as after a preemption). Halves run in scheduled order, so a
block's writer is always settled before its readers run.

A failure while applying a request's results (detokenising, stop strings, draft bookkeeping)
fails that request; its keys and values were computed, so nothing else is touched.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from reasonrl.engine.sequence import RequestOutput, SeqStatus, Sequence

if TYPE_CHECKING:
    from reasonrl.engine.llm_engine import LLMEngine
    from reasonrl.engine.spec.tree import DraftTree

log = logging.getLogger(__name__)
Unit = list[tuple[Sequence, int]]  # one request's scheduled sequences, each with its new tokens


def run_isolated(engine: LLMEngine, scheduled: list[tuple[Sequence, int]],
                 trees: dict[int, DraftTree]) -> list[RequestOutput]:
    """Run one step's batch and apply its results; the outputs of the requests that finished or
    streamed, and of those that failed (with `error` set)."""
    step = _IsolatedStep(engine, trees)
    step.run(_by_request(scheduled), retry=False)
    return step.outputs


def _by_request(scheduled: list[tuple[Sequence, int]]) -> list[Unit]:
    units: dict[str, Unit] = {}
    for seq, n in scheduled:
        units.setdefault(seq.request_id, []).append((seq, n))
    return list(units.values())


class _IsolatedStep:
    def __init__(self, engine: LLMEngine, trees: dict[int, DraftTree]):
        self.engine, self.trees = engine, trees
        self.bad_blocks: set[int] = set()  # blocks this step should have computed, but did not
        self.outputs: list[RequestOutput] = []

    def run(self, units: list[Unit], retry: bool) -> None:
        units = [u for u in (self._without_bad_readers(u) for u in units) if u]
        if not units:
            return
        batch = [item for unit in units for item in unit]
        if retry and self.engine.evictor is not None:
            for seq, _ in batch:  # a failed attempt may have selected some layers' kept entries
                self.engine.evictor.kept.pop(seq.seq_id, None)
        self.engine.kv.begin_attempt()
        try:
            result = self.engine.runner.run(batch, self.trees, self.engine.config.draft_sampling)
        except Exception as exc:
            self.engine.kv.rollback()  # a staged format's slot bookkeeping, back to before this attempt
            if len(units) == 1:
                self._fail(units[0], exc, computed=False)
                return
            half = len(units) // 2
            self.run(units[:half], retry=True)
            self.run(units[half:], retry=True)
            return
        if self.engine.speculator is not None:
            self.engine._collect_features(batch, result)
        for unit in units:
            try:
                self.outputs += self.engine._postprocess(unit, result)
            except Exception as exc:
                self._fail(unit, exc, computed=True)

    def _fail(self, unit: Unit, exc: Exception, computed: bool) -> None:
        rid = unit[0][0].request_id
        log.error("request %r failed in an engine step; the others go on", rid, exc_info=exc)
        if not computed:
            self._discard(unit)
        out = self.engine.fail(rid, f"{type(exc).__name__}: {exc}")
        if out is not None:
            self.outputs.append(out)

    def _discard(self, unit: Unit) -> None:
        """The blocks these sequences were to compute this step hold nothing trustworthy."""
        blocks = [b for seq, n in unit for b in _written(seq, n, self.engine.block_manager.block_size)]
        self.bad_blocks.update(blocks)
        self.engine.block_manager.forget(blocks)

    def _without_bad_readers(self, unit: Unit) -> Unit:
        """Sends back to the waiting queue the sequences whose context includes a bad block."""
        bs, keep = self.engine.block_manager.block_size, []
        for seq, n in unit:
            context = seq.block_table[: (seq.num_computed - seq.num_evicted) // bs]
            if not self.bad_blocks.intersection(context):
                keep.append((seq, n))
                continue
            self._discard([(seq, n)])
            self._requeue(seq)
        return keep

    def _requeue(self, seq: Sequence) -> None:
        scheduler = self.engine.scheduler
        scheduler.remove(seq)  # frees its blocks; it recomputes everything, like a preempted sequence
        if self.engine.evictor is not None:
            self.engine.evictor.kept.pop(seq.seq_id, None)
        seq.status = SeqStatus.WAITING
        scheduler.waiting.appendleft(seq)


def _written(seq: Sequence, n: int, block_size: int) -> list[int]:
    """Blocks holding the step's `n` new tokens of `seq`."""
    at = seq.num_computed - seq.num_evicted
    return seq.block_table[at // block_size: -(-(at + n) // block_size)]
