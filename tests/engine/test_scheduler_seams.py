"""Features constrain scheduling through the sequence; the scheduler knows none of them."""

from reasonrl.engine.block_manager import BlockManager
from reasonrl.engine.sampling_params import SamplingParams
from reasonrl.engine.scheduler import Scheduler
from reasonrl.engine.sequence import Sequence


def seq(i, prompt, **constraints):
    s = Sequence(i, f"r{i}", 0, prompt, SamplingParams(max_tokens=4), seed=0)
    for key, value in constraints.items():
        setattr(s, key, value)
    return s


def test_a_prefill_chunk_never_crosses_the_sequences_chunk_boundary():
    sched = Scheduler(BlockManager(64, 4), max_num_seqs=4, max_num_batched_tokens=100)
    s = seq(0, list(range(30)), chunk_boundary=10)
    sched.add(s)
    [(got, n)] = sched.schedule()
    assert got is s and n == 10  # not 30: the step must end at token 10
    s.num_computed += n
    [(_, n)] = sched.schedule()
    assert n == 20


def test_admission_takes_cached_blocks_only_before_reuse_before():
    blocks = BlockManager(64, 4)
    sched = Scheduler(blocks, max_num_seqs=4, max_num_batched_tokens=100)
    first = seq(0, list(range(24)))
    sched.add(first)
    [(_, n)] = sched.schedule()
    first.num_computed += n
    free = seq(1, list(range(24)))
    limited = seq(2, list(range(24)), reuse_before=9)
    blocks.admit(free)
    blocks.admit(limited, limited.reuse_before)
    assert free.num_cached == 20 and limited.num_cached == 8  # whole blocks before token 9 only
