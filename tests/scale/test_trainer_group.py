"""The Ray run: two engine actors and a two-rank gloo trainer group take the single-process update."""

import pytest
import torch

from reasonrl.engine import LLMEngine
from reasonrl.engine.config import EngineConfig
from reasonrl.engine.sampling_params import SamplingParams
from reasonrl.envs.letter import LetterEnvironment
from reasonrl.models import Tokenizer, load_model
from reasonrl.rl.config import load_config
from reasonrl.rl.metrics import read_metrics
from reasonrl.rl.trainer import Trainer
from reasonrl.rl.update import PolicyUpdate
from reasonrl.scale.engine_pool import EnginePool
from reasonrl.scale.trainer_group import TrainerGroup
from tests.scale.common import on_each_engine

greedy = SamplingParams(temperature=0, max_tokens=6, detokenize=False)


class Recorder:
    """The trainer group, recording each update's batch and the driver's weights after it."""

    def __init__(self, group, policy):
        self.group, self.policy, self.calls = group, policy, []

    def __call__(self, samples, advantages, version):
        stats = self.group(samples, advantages, version)
        self.calls.append((samples, advantages, version, {k: v.clone() for k, v in self.policy.state_dict().items()}))
        return stats

    def __getattr__(self, name):
        return getattr(self.group, name)


def settings(policy_dir, run_dir, **overrides):
    return {"model.path": str(policy_dir), "train.run_dir": str(run_dir), "env.name": "letter", "env.eval_size": 4,
            "rollout.max_tokens": 16, "rollout.prompts_per_step": 4, "rollout.samples_per_prompt": 4,
            "optim.lr": 1e-2, "optim.max_tokens_per_microbatch": 64, "engine.kv_cache_memory": 1 << 24,
            "train.save_every": 100, "cluster.ray": True, "cluster.engines": 2, "cluster.trainers": 2, **overrides}


@pytest.mark.slow
@pytest.mark.parametrize("fsdp", [False, True], ids=["replicated", "fsdp2"])
def test_two_engines_and_two_gloo_ranks_take_the_single_process_update(ray_cluster, policy_dir, tmp_path, fsdp):
    cfg = load_config(None, settings(policy_dir, tmp_path / "run", **{"train.steps": 2, "rollout.over_provision": 1.5,
                                                                      "cluster.weight_sync": "broadcast",
                                                                      "cluster.fsdp": fsdp}))
    trainer = Trainer(cfg, LetterEnvironment(), load_model(policy_dir), Tokenizer.from_dir(policy_dir), console=False)
    assert isinstance(trainer.backend, EnginePool) and isinstance(trainer.update, TrainerGroup)
    trainer.update = spy = Recorder(trainer.update, trainer.policy)
    try:
        trainer.train()
        engine_versions = [s["version"] for s in trainer.backend._each("stats")]
        served = on_each_engine(trainer.backend, list(range(5, 30)), greedy)
        assert trainer.backend.members is not None and trainer.backend.weights is None  # synced by broadcast only
    finally:
        trainer.close()
    samples, advantages, version, after = spy.calls[0]
    assert {e for s in samples for e in s.versions} == {0}
    single = PolicyUpdate(load_model(policy_dir), load_config(None, settings(policy_dir, tmp_path / "x")),
                          Tokenizer.from_dir(policy_dir).pad_token_id)
    stats = single(samples, advantages, version)
    assert stats["optimizer_steps"] == 1
    # Adam's first step is ~lr per weight, and sums in another order move it by far less: any real
    # difference (a rank's gradient missing, counted twice, or divided by its own denominator) is ~lr.
    # Where a gradient is near Adam's eps (1e-8), g / (|g| + eps) turns summation-order noise into
    # up to a few 1e-3 lr: a handful of such weights may exceed the tight bound, never 0.1 lr
    lr = cfg.optim.lr
    for name, p in single.policy.state_dict().items():
        diff = (after[name] - p).abs()
        assert float(diff.max()) <= 0.1 * lr and float((diff > 1e-3 * lr).float().mean()) < 1e-3, name
    assert any(not torch.equal(after[n], p) for n, p in load_model(policy_dir).state_dict().items())  # it moved
    rows = [r for r in read_metrics(tmp_path / "run") if "reward_mean" in r]
    assert len(rows) == 2 and all(r["dropped_groups"] == 0 for r in rows)
    assert all(r["sync_seconds"] > 0 and r["trainer_ranks"] == 2 for r in rows)
    assert engine_versions == [2, 2]  # both engines serve the weights of the last update, broadcast by rank 0
    reference = LLMEngine(trainer.policy, Tokenizer.from_dir(policy_dir), EngineConfig(kv_cache_memory=1 << 24))
    reference.add_request("r", list(range(5, 30)), greedy)
    expected = reference.drain()["r"].outputs[0]
    for out in served:
        assert out.token_ids == expected.token_ids
        torch.testing.assert_close(torch.tensor(out.logprobs), torch.tensor(expected.logprobs))


@pytest.mark.slow
def test_a_stopped_ray_run_resumes_with_its_buffer_weights_and_optimizer(ray_cluster, policy_dir, tmp_path):
    """Colocated engines and trainer ranks, FSDP2-sharded: the checkpoint holds the optimizer state in the
    single-process format and every rank gets its shard of it back."""
    from reasonrl.rl.checkpoint import latest_checkpoint, load_trainer_state

    def trainer():
        cfg = load_config(None, settings(policy_dir, tmp_path / "run", **{"train.steps": 2, "rollout.over_provision": 2.0,
                                                                          "rollout.max_tokens": 32, "engine.max_num_seqs": 4,
                                                                          "cluster.placement": "colocated",
                                                                          "cluster.fsdp": True}))
        return Trainer(cfg, LetterEnvironment(), load_model(policy_dir), Tokenizer.from_dir(policy_dir), console=False)
    first = trainer()
    try:
        first.train(stop=lambda: first.step >= 1)  # as Ctrl-C or a killed job after step 1
    finally:
        first.close()
    state = load_trainer_state(latest_checkpoint(tmp_path / "run"))
    assert state["rollout"]["april"]["buffer"]  # partial groups saved with the checkpoint
    second = trainer()
    try:
        assert second.resume() and second.step == 1
        saved = state["update"]["optimizer"]["state"]
        restored = second.update.state_dict()["optimizer"]["state"]  # rank 0's, pushed from the checkpoint
        assert all(torch.equal(saved[i]["exp_avg"], restored[i]["exp_avg"]) for i in saved)
        second.train()
        assert second.backend.stats()["kv_allocated_bytes"] == 0  # colocated: engines asleep while the trainer runs
    finally:
        second.close()
    rows = [r for r in read_metrics(tmp_path / "run") if "reward_mean" in r]
    assert [r["step"] for r in rows] == [1, 2] and rows[1]["resumed_samples"] > 0 and rows[1]["dropped_groups"] == 0


@pytest.mark.slow
def test_a_step_without_an_update_steps_the_schedule_on_every_rank(ray_cluster, policy_dir, tmp_path):
    """Dynamic sampling filtered every group: no update, but each rank's learning-rate schedule moves on
    (a rank left behind would train the next update at another rate than rank 0 reports)."""
    class FlatLetters(LetterEnvironment):
        def rewards(self, prompts, texts):
            return [0.0] * len(texts)

    cfg = load_config(None, settings(policy_dir, tmp_path / "run", **{
        "train.steps": 2, "rollout.dynamic_sampling": True, "rollout.max_groups_per_step": 4,
        "optim.warmup_steps": 4, "cluster.engines": 1}))
    trainer = Trainer(cfg, FlatLetters(), load_model(policy_dir), Tokenizer.from_dir(policy_dir), console=False)
    try:
        with pytest.warns(UserWarning, match="dynamic sampling filtered all 4 groups"):
            trainer.train()
        ranks = trainer.update.ray.get([w.lr.remote() for w in trainer.update.workers])
    finally:
        trainer.close()
    rows = [r for r in read_metrics(tmp_path / "run") if "skipped_update" in r]
    assert [r["lr"] for r in rows] == pytest.approx([1e-2 / 4, 2e-2 / 4])
    assert ranks == pytest.approx([3e-2 / 4, 3e-2 / 4])


@pytest.mark.slow
def test_a_broadcast_reaches_engines_that_roll_out_in_another_dtype_than_the_master_weights(ray_cluster, policy_dir,
                                                                                              tmp_path):
    """Float32 master weights on the trainer, bfloat16 engines (a GPU run's default, rollout.dtype): the
    broadcast is laid out in the engines' dtype. It sent float32 buckets that the engines' receive,
    sized for bfloat16, aborted on (gloo) and would hang on or misread (NCCL)."""
    cfg = load_config(None, settings(policy_dir, tmp_path / "run", **{
        "train.steps": 2, "cluster.engines": 1, "cluster.trainers": 1, "cluster.weight_sync": "broadcast",
        "rollout.dtype": "bfloat16"}))
    trainer = Trainer(cfg, LetterEnvironment(), load_model(policy_dir), Tokenizer.from_dir(policy_dir), console=False)
    try:
        trainer.train()
        stats = trainer.backend.stats()
        assert [s["version"] for s in trainer.backend._each("stats")] == [2]
        served = on_each_engine(trainer.backend, list(range(5, 30)), greedy)[0]
    finally:
        trainer.close()
    assert stats["engine_deaths"] == 0 and trainer.backend.members is not None
    reference = LLMEngine(trainer.policy.to(torch.bfloat16), Tokenizer.from_dir(policy_dir),
                          EngineConfig(kv_cache_memory=1 << 24))
    reference.add_request("r", list(range(5, 30)), greedy)
    assert served.token_ids == reference.drain()["r"].outputs[0].token_ids  # the engine holds the trained weights
