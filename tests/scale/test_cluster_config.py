"""The `cluster:` section and `--ray`: validation, the missing-Ray message, placement bundles."""

import builtins
import importlib.util

import pytest
import yaml

from reasonrl.cli import main
from reasonrl.config import ConfigError
from reasonrl.rl.config import load_config
from reasonrl.rl.run import RunMismatch, open_run
from reasonrl.scale.cluster import Cluster, import_ray
from reasonrl.scale.config import ClusterConfig


def test_cluster_section_is_validated_and_off_by_default():
    cfg = load_config(None, {"model.path": "m"})
    assert cfg.cluster.ray is False  # without --ray nothing changes
    with pytest.raises(ValueError, match="cluster.engines: must be >= 1"):
        load_config(None, {"model.path": "m", "cluster.engines": 0})
    with pytest.raises(ConfigError, match="cluster.placement"):
        load_config(None, {"model.path": "m", "cluster.placement": "everywhere"})


def test_a_negative_placement_timeout_is_refused_by_name():
    """Ray aborted the whole process with a C++ check failure (timeout_ms >= 0) on a negative one."""
    for bad in (-5.0, 0):
        with pytest.raises(ValueError, match="cluster.placement_timeout: must be > 0"):
            load_config(None, {"model.path": "m", "cluster.placement_timeout": bad})


def test_without_ray_the_error_says_how_to_install_it(monkeypatch):
    real_find, real_import = importlib.util.find_spec, builtins.__import__
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real_find(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'reasonrl\[ray\]'"):
        load_config(None, {"model.path": "m", "cluster.ray": True})

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ImportError, match=r"pip install 'reasonrl\[ray\]'"):
        import_ray()


def test_train_ray_flag_turns_the_cluster_section_on(tmp_path, monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr("reasonrl.rl.train.run_training", lambda cfg, control: seen.setdefault("cfg", cfg) and 0)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model": "m", "cluster": {"engines": 3}}))
    assert main(["train", str(recipe), "--ray"]) == 0
    assert seen["cfg"].cluster.ray is True and seen["cfg"].cluster.engines == 3
    assert main(["train", str(recipe), "--set", "cluster.nodes=2"]) == 2
    assert "cluster.nodes" in capsys.readouterr().err


def test_a_run_may_move_between_one_process_and_ray(tmp_path):
    single = load_config(None, {"model.path": "m"}).to_dict()
    on_ray = load_config(None, {"model.path": "m", "cluster.ray": True, "cluster.engines": 4}).to_dict()
    open_run(tmp_path, single, console=False)
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    open_run(tmp_path, on_ray, console=False)  # where it runs does not change what is trained
    with pytest.raises(RunMismatch):
        open_run(tmp_path, {**on_ray, "optim": {**on_ray["optim"], "lr": 1.0}}, console=False)


@pytest.mark.parametrize("placement, engine, trainer, bundles", [
    ("disaggregated", (1, 1.0, 1.0), (2, 1.0, 1.0), [{"CPU": 1.0, "GPU": 1.0}] * 3),
    ("colocated", (1, 1.0, 0.5), (1, 2.0, 0.5), [{"CPU": 3.0, "GPU": 1.0}] * 2),
])
def test_placement_bundles(placement, engine, trainer, bundles):
    cluster = Cluster.__new__(Cluster)  # the arithmetic only: no Ray
    cluster.cfg = ClusterConfig(ray=True, engines=2, trainers=1 if placement == "disaggregated" else 2,
                                placement=placement, trainer_threads=2 if placement == "colocated" else 1)
    cluster.use_gpus = True
    e, t = cluster.slot("engine", 1), cluster.slot("trainer", 1 if placement == "colocated" else 0)
    assert (e.bundle, e.cpus, e.gpus) == engine and (t.bundle, t.cpus, t.gpus) == trainer
    assert cluster._bundles() == bundles


def test_the_multi_node_recipe_loads():
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[2] / "recipes" / "scale-gpu.yaml")
    c = cfg.cluster
    assert c.ray and c.address == "auto" and (c.engines, c.trainers) == (8, 4) and c.fsdp and c.weight_sync == "broadcast"


def test_a_run_saved_before_the_cluster_section_existed_resumes(tmp_path):
    old = load_config(None, {"model.path": "m"}).to_dict()
    del old["cluster"], old["rollout"]["remote_engine"]  # as an earlier reasonrl saved it
    open_run(tmp_path, old, console=False)
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    open_run(tmp_path, load_config(None, {"model.path": "m"}).to_dict(), console=False)


def test_a_local_cluster_reserves_what_its_bundles_ask_for(monkeypatch):
    """Colocated bundles hold an engine's and a trainer's threads each: the local cluster reserved
    their sum per role instead, and on a 2-core machine the run waited out placement_timeout."""
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    for placement in ("colocated", "disaggregated"):
        cluster = Cluster.__new__(Cluster)
        cluster.cfg, cluster.use_gpus = ClusterConfig(ray=True, engines=2, trainers=1, placement=placement), False
        assert cluster._local_resources()["num_cpus"] >= sum(b["CPU"] for b in cluster._bundles())


def test_ray_and_remote_servers_are_not_combined():
    """On Ray the engine actors roll out: the remote servers were silently left out."""
    pytest.importorskip("ray")
    with pytest.raises(ConfigError, match="rollout.remote_url: rollouts run either on remote servers or on Ray"):
        load_config(None, {"model.path": "m", "cluster.ray": True, "rollout.remote_url": "http://127.0.0.1:1"})


def test_a_checkpoint_without_engine_state_resumes_in_one_process():
    """Ray's engine pool and a remote server save no engine state: an in-process resume raised
    KeyError 'seed_rng' on it."""
    from reasonrl.rollout.backend import EngineBackend

    class Engine:
        loaded = None

        def load_state_dict(self, state):
            self.loaded = state["seed_rng"]

    backend = EngineBackend.__new__(EngineBackend)
    backend.engine = Engine()
    backend.load_state_dict({})
    assert backend.engine.loaded is None


def test_an_engine_sharing_a_gpu_with_a_trainer_rank_leaves_it_the_ranks_weights_and_adam_state():
    """Engine actors start before the trainer group and sized their KV cache from what was free then."""
    import torch

    from reasonrl.scale.placement import trainer_rank_bytes

    policy = torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.Linear(10, 2))  # 110 + 22 float32 weights
    policy[1].requires_grad_(False)
    weights, adam = 132 * 4, 2 * 110 * 4
    colocated = {"model.path": "m", "cluster.placement": "colocated", "cluster.trainers": 2}
    assert trainer_rank_bytes(policy, load_config(None, colocated), "cuda") == weights + adam
    assert trainer_rank_bytes(policy, load_config(None, {**colocated, "cluster.fsdp": True}), "cuda") == (weights + adam) // 2
    assert trainer_rank_bytes(policy, load_config(None, {**colocated, "cluster.fsdp": True, "cluster.trainers": 8}),
                              "cuda") == weights  # loaded whole before it is sharded
    assert trainer_rank_bytes(policy, load_config(None, {**colocated, "train.reference_model": True}),
                              "cuda") == 2 * weights + adam  # a whole frozen copy beside it
    assert trainer_rank_bytes(policy, load_config(None, colocated), "cpu") == 0
    assert trainer_rank_bytes(policy, load_config(None, {"model.path": "m"}), "cuda") == 0  # disaggregated
