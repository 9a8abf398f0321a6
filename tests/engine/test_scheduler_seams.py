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


def test_a_block_held_across_a_prefix_cache_reset_is_never_cached():
    """reset_prefix_cache (after the weights change in place) with a sequence running whose first block is
    partly filled: once it fills, its keys and values are partly the old weights', and no later request may
    get it from the cache (it did: only blocks after the first checked the chain)."""
    blocks = BlockManager(16, 4)
    running = seq(0, [1, 2, 3])
    blocks.admit(running)
    blocks.append(running, 3)
    running.num_computed = 3
    blocks.reset_prefix_cache()
    running.output_ids += [4, 5, 6, 7, 8]
    blocks.append(running, 5)  # fills block 0 (old and new keys) and block 1 (new only, but chained to 0)
    running.num_computed = 8
    later = seq(1, [1, 2, 3, 4, 5, 6, 7, 8, 9])
    blocks.admit(later)
    assert later.num_cached == 0
    blocks.release(running)
    again = seq(2, [1, 2, 3, 4, 5, 6, 7, 8, 9])
    blocks.admit(again)
    assert again.num_cached == 0
    # a block freed and handed out afresh is cacheable again
    fresh = seq(3, [1, 2, 3, 4, 9])
    blocks.admit(fresh)
    blocks.append(fresh, 5)
    fresh.num_computed = 5
    probe = seq(4, [1, 2, 3, 4, 9])
    blocks.admit(probe)
    assert probe.num_cached == 4
