"""Helpers of the Ray tests."""


def on_each_engine(pool, prompt, params):
    """The output of `prompt` from every engine (one request pinned to each)."""
    from reasonrl.scale.engine_pool import Request

    load = pool.balance.load
    for i, target in enumerate(list(pool.engines)):
        for e in pool.engines:
            load[e.index] += 0 if e is target else 10 ** 9  # least outstanding tokens: the target
        pool._assign(Request(f"pin{i}", prompt, params, [], [], -1))
        for e in pool.engines:
            load[e.index] -= 0 if e is target else 10 ** 9
    got = {}
    while len(got) < len(pool.engines):
        got.update(pool.poll())
    return [got[f"pin{i}"] for i in range(len(pool.engines))]
