"""Scale-out on Ray: many rollout engines, a distributed trainer group, one training loop.

`reasonrl train RECIPE --ray` (or `cluster.ray: true`) runs the same `Trainer` loop as a single
process; only two of its parts are swapped:

    rollout backend  EngineBackend (one in-process engine)  ->  EnginePool (N engine actors)
    policy update    PolicyUpdate (this process)             ->  TrainerGroup (M torch.distributed ranks)

    config.py          the `cluster:` section of a recipe (ClusterConfig)
    placement.py       ScaleOut: the cluster, the engine pool and the trainer group of one run
    cluster.py         joining or starting Ray, placing roles on bundles (colocated or disaggregated)
    engine_worker.py   one LLMEngine stepping in its own thread inside a Ray actor
    engine_pool.py     the rollout backend over the actors: least outstanding tokens (rollout/balance.py), abort
                       everywhere, partial progress kept so a dead actor loses no sample
    weight_sync.py     trainer rank 0 -> engines by collective broadcast (the object-store path is the pool's)
    data_parallel.py   the trainer ranks' gradient reduction (replicated, or FSDP2-sharded; gloo / NCCL)
    trainer_worker.py  one trainer rank: its policy replica and its `PolicyUpdate`
    trainer_group.py   the driver's handle on the ranks, with `PolicyUpdate`'s interface

docs/scale.md is the user's guide (placements, weight sync, faults, a multi-node GPU recipe).
"""
