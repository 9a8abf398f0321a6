"""The colocated trainer end to end on tiny checkpoints (CPU, fp32)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from reasonrl.envs.letter import LetterEnvironment
from reasonrl.models import Tokenizer, load_model
from reasonrl.models.loader import load_weights
from reasonrl.models.tiny import make_checkpoint, make_tokenizer
from reasonrl.rl.checkpoint import checkpoint_step, latest_checkpoint
from reasonrl.rl.config import load_config
from reasonrl.rl.metrics import read_metrics
from reasonrl.rl.report import write_report
from reasonrl.rl.sft import SFTConfig, load_sft_data, train_sft
from reasonrl.rl.trainer import Trainer


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    tok = make_tokenizer(["Write the letter a many times. aaaa bbbb abab", "hello world 123"] * 10, vocab_size=300)
    return make_checkpoint(tmp_path_factory.mktemp("policy") / "m", "qwen2", tok, hidden_size=64, num_layers=2)


def config(policy_dir, run_dir, **overrides):
    base = {"model.path": str(policy_dir), "train.run_dir": str(run_dir), "env.name": "letter", "env.eval_size": 8,
            "rollout.max_tokens": 16, "rollout.prompts_per_step": 4, "rollout.samples_per_prompt": 8,
            "optim.lr": 1e-2, "engine.kv_cache_memory": 1 << 24, "train.save_every": 100}
    return {**base, **overrides}


def make_trainer(policy_dir, run_dir, **overrides):
    cfg = load_config(None, config(policy_dir, run_dir, **overrides))
    return Trainer(cfg, LetterEnvironment(), load_model(policy_dir), Tokenizer.from_dir(policy_dir), console=False)


class FlatLetters(LetterEnvironment):
    """Every response scores 0: every group's rewards are equal (a policy that never solves the task yet)."""

    def rewards(self, prompts, texts):
        return [0.0] * len(texts)


def test_a_step_whose_groups_dynamic_sampling_all_filters_updates_nothing_and_goes_on(policy_dir, tmp_path):
    cfg = load_config(None, config(policy_dir, tmp_path / "run", **{
        "train.steps": 2, "rollout.dynamic_sampling": True, "rollout.max_groups_per_step": 6,
        "optim.warmup_steps": 4}))
    trainer = Trainer(cfg, FlatLetters(), load_model(policy_dir), Tokenizer.from_dir(policy_dir), console=False)
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    with pytest.warns(UserWarning, match="dynamic sampling filtered all 6 groups") as caught:
        trainer.train()  # raised ZeroDivisionError before
    assert not [w for w in caught if "lr_scheduler" in str(w.message)]  # torch's warning of an early schedule step
    assert all(torch.equal(v, trainer.policy.state_dict()[k]) for k, v in before.items())
    rows = [r for r in read_metrics(tmp_path / "run") if "skipped_update" in r]
    assert [(r["step"], r["trained_groups"], r["filtered_groups"]) for r in rows] == [(1, 0, 6), (2, 0, 6)]
    # the schedule counts training steps, skipped or not (it stood still: the warm-up outlasted the run)
    assert [r["lr"] for r in rows] == pytest.approx([1e-2 / 4, 2e-2 / 4])
    assert trainer.update.lr() == pytest.approx(3e-2 / 4)
    assert latest_checkpoint(tmp_path / "run") is not None


def test_a_step_whose_loss_is_not_finite_stops_the_run_with_finite_weights(policy_dir, tmp_path, capsys):
    """It went on training: metrics null, exit 0, and a checkpoint whose every weight was nan."""
    from reasonrl.rl.trainer import TrainingDiverged

    trainer = make_trainer(policy_dir, tmp_path / "run", **{"train.steps": 3, "train.save_every": 1})
    trainer.logger.console = True
    loss_fn, calls = trainer.update.loss_fn, []

    def nan_from_step_2(*args, **kwargs):
        loss, stats = loss_fn(*args, **kwargs)
        calls.append(trainer.step)
        return (loss * float("nan") if trainer.step >= 2 else loss), stats

    trainer.update.loss_fn = nan_from_step_2
    with pytest.raises(TrainingDiverged, match=r"step 2: 1 of 1 optimizer steps .* not finite.*step_000001"):
        trainer.train()
    trainer.close()
    assert all(torch.isfinite(p).all() for p in trainer.policy.parameters())
    assert checkpoint_step(latest_checkpoint(tmp_path / "run")) == 1  # nothing saved after it
    row = read_metrics(tmp_path / "run")[-1]
    assert row["step"] == 2 and row["nonfinite_updates"] == 1 and row["grad_norm"] is None
    assert "gnorm nan" in capsys.readouterr().err  # shown, not left out


@pytest.mark.slow
def test_grpo_raises_the_reward_of_a_tiny_model(policy_dir, tmp_path):
    trainer = make_trainer(policy_dir, tmp_path / "run", **{"train.steps": 14, "rollout.over_provision": 1.5})
    trainer.train()
    rows = [r for r in read_metrics(tmp_path / "run") if "reward_mean" in r]
    first = sum(r["reward_mean"] for r in rows[:3]) / 3
    last = sum(r["reward_mean"] for r in rows[-3:]) / 3
    assert last > 2 * first and last > first + 0.05
    assert all(r["dropped_groups"] == 0 for r in rows)
    report = write_report(tmp_path / "run")
    assert (tmp_path / "run" / "reward.png").stat().st_size > 1000 and "accuracy_before" in report.read_text()


def test_engine_serves_the_updated_policy_and_frees_kv_between_phases(policy_dir, tmp_path):
    trainer = make_trainer(policy_dir, tmp_path / "run", **{"train.steps": 1})
    engine = trainer.backend.engine
    assert engine.model is trainer.policy  # one set of weights, no copy
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    groups, _ = trainer.rollout.collect(1, 0)
    assert engine.stats()["kv_allocated_bytes"] == 0  # released for training
    trainer.step = 1
    metrics = trainer.train_step()
    assert any(not torch.equal(before[k], v) for k, v in trainer.policy.state_dict().items())
    assert trainer.version == 1 and metrics["logprob_mismatch"] < 1e-5  # engine and trainer log-probs agree
    # the engine now samples from the new weights: its greedy output equals a fresh load of them
    path = trainer.save()
    fresh = load_model(path)
    ids = trainer.rollout.encode(trainer.env.prompts(n=1, split="eval")[0])
    with torch.no_grad():
        expected = fresh.compute_logits(fresh.forward_padded(torch.tensor([ids])))[0, -1].argmax().item()
    engine.wake()
    from reasonrl.engine import SamplingParams

    engine.add_request("x", ids, SamplingParams(temperature=0, max_tokens=1))
    while engine.has_unfinished():
        outs = engine.step()
    assert outs[0].outputs[0].token_ids == [expected]


def _run_cli(cfg_path, env):
    return subprocess.Popen([sys.executable, "-m", "reasonrl.cli", "train", str(cfg_path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_kill_and_resume_continues_the_same_run(policy_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {}
    for name in ("straight", "killed"):
        cfg = {k: v for k, v in config(policy_dir, tmp_path / name, **{
            "train.steps": 4, "train.save_every": 2, "rollout.over_provision": 2.0, "rollout.max_tokens": 24,
            "engine.max_num_seqs": 12}).items()}  # few slots: over-provisioned groups are cut mid-way
        nested = {}
        for k, v in cfg.items():
            sec, key = k.split(".")
            nested.setdefault(sec, {})[key] = v
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(nested))
        runs[name] = path
    assert _run_cli(runs["straight"], env).wait(timeout=600) == 0
    proc = _run_cli(runs["killed"], env)
    deadline = time.time() + 600
    while not (tmp_path / "killed" / "checkpoints" / "step_000002").is_dir():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert latest_checkpoint(tmp_path / "killed").name == "step_000002"
    resumed = _run_cli(runs["killed"], env)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read().decode()
    a, b = load_model(latest_checkpoint(tmp_path / "straight")), load_model(latest_checkpoint(tmp_path / "killed"))
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    ma, mb = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "killed")
    assert [r["step"] for r in mb] == [0, 1, 2, 3, 4]
    for ra, rb in zip(ma, mb):
        for key in ("reward_mean", "length_p50", "buffer_groups", "resumed_samples", "eval_accuracy", "grad_norm"):
            assert ra.get(key) == rb.get(key), (ra["step"], key)
    # the step-2 checkpoint held partial groups, and step 3 resumed them after the kill
    assert ma[2]["buffer_groups"] > 0 and ma[3]["resumed_samples"] > 0 and mb[3]["resumed_samples"] == ma[3]["resumed_samples"]


def test_sft_learns_the_response_and_ignores_the_prompt(policy_dir, tmp_path):
    tok = Tokenizer.from_dir(policy_dir)
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Write the letter {c} many times.", "response": c * 8}) + "\n"
                            for c in "ab" * 16))
    samples = load_sft_data(data, tok)
    assert samples[0].response_ids[-1] == tok.eos_token_ids[0]
    model = load_model(policy_dir)
    losses = train_sft(model, samples, SFTConfig(epochs=6, lr=3e-3, samples_per_step=8))
    assert losses[-1] < 0.5 * losses[0]
    # loss on the response only: changing a prompt's tokens does not change the loss's targets
    from reasonrl.rl.sft import sft_loss

    _, n = sft_loss(model, samples[:2])
    assert n == sum(len(s.response_ids) for s in samples[:2])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "response": "y"}\n{"prompt": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        load_sft_data(bad, tok)


def test_sft_draws_each_example_of_a_lazy_data_set_once_per_step(policy_dir, tmp_path):
    """The demo's data build their examples when drawn: the trainer scanned them all when it started
    (minutes of image rendering for the VLM demo) and drew every batch's twice."""
    from collections.abc import Sequence

    tok = Tokenizer.from_dir(policy_dir)
    rows = tmp_path / "sft.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"Write {c}.", "response": c * 4}) + "\n" for c in "ab" * 4))
    samples, drawn = load_sft_data(rows, tok), []

    class Drawn(Sequence):
        def __len__(self):
            return len(samples)

        def __getitem__(self, i):
            drawn.append(i)
            return samples[i]

    from reasonrl.rl.sft import SFTTrainer

    trainer = SFTTrainer(load_model(policy_dir), Drawn(), SFTConfig(epochs=1, lr=1e-3, samples_per_step=4))
    assert drawn == []
    trainer.step()
    assert len(drawn) == 4 and len(set(drawn)) == 4


@pytest.mark.parametrize("rows,error", [
    ([{"prompt": ["hi"], "response": "a"}], "rows.jsonl:1: a chat prompt is a list of messages"),  # a traceback
    ([{"prompt": [{"content": "hi"}], "response": "a"}], "rows.jsonl:1: a chat prompt"),  # rendered without a role
    ([{"prompt": "Write", "response": "a"}, {"prompt": "", "response": "b"}], "rows.jsonl:2: the prompt encodes to no"),
])
def test_sft_rows_that_cannot_train_are_refused_naming_the_line(policy_dir, tmp_path, rows, error):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=error):
        load_sft_data(data, Tokenizer.from_dir(policy_dir), chat=error.startswith("rows.jsonl:1"))


def test_sft_rows_holding_unicode_line_separators_load(policy_dir, tmp_path):
    """SAND writes its traces with raw U+2028/U+0085 in JSON strings; splitlines() cut those rows in two."""
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": "p", "response": f"a{sep}b"}, ensure_ascii=False) + "\n"
                            for sep in ("\u2028", "\u2029", "\x85")), encoding="utf-8")
    assert len(load_sft_data(data, Tokenizer.from_dir(policy_dir))) == 3


def test_an_sft_run_resumed_on_other_data_is_refused(policy_dir):
    from reasonrl.rl.sft import SFTTrainer, sft_example

    tok = Tokenizer.from_dir(policy_dir)
    data = [sft_example(f"Write {c}.", c * 4, tok) for c in "abcd"]
    state = SFTTrainer(load_model(policy_dir), data, SFTConfig(samples_per_step=2)).state_dict()
    SFTTrainer(load_model(policy_dir), list(data), SFTConfig(samples_per_step=2)).load_state_dict(state)  # the same
    with pytest.raises(ValueError, match="not those this run was trained on"):
        SFTTrainer(load_model(policy_dir), data[:3], SFTConfig(samples_per_step=2)).load_state_dict(state)


def test_accuracy_metrics_read_the_environments_reward_not_the_length_shaped_one():
    """With DAPO's overlong shaping a correct answer in the penalty band has a reward below 1 (or
    below 0): training accuracy counted it wrong (-0.156 logged where 0.143 was true, in a probe)."""
    from types import SimpleNamespace

    from reasonrl.envs.base import Prompt
    from reasonrl.models.chat import ChatEncoder
    from reasonrl.rollout.buffer import Group
    from reasonrl.rollout.config import RolloutConfig
    from reasonrl.rollout.manager import RolloutManager
    from reasonrl.rollout.sample import Sample

    env, tok = LetterEnvironment("a"), make_tokenizer(["a" * 40, "b" * 40] * 5, vocab_size=280)
    manager = RolloutManager(SimpleNamespace(), env, ChatEncoder(tok),
                             RolloutConfig(1, 4, 1.0, 24, overlong_max=24, overlong_cache=16))
    prompt = env.prompts(n=1)[0]
    a, b = (tok.encode(c, add_special_tokens=False)[0] for c in "ab")
    ids = [[a] * 20, [a] * 20, [b] * 20, [b] * 4]  # two right (in the penalty band), one wrong, one wrong and short
    samples = [Sample(prompt_ids=[1], response_ids=r, prompt=prompt, versions=[0]) for r in ids]
    group = Group(0, prompt, [1], samples, born_step=0)
    manager.score(group)
    assert samples[0].reward < samples[0].env_reward  # shaped: in the penalty band
    stats = Trainer.sample_stats(SimpleNamespace(env=env, version=0), [group])
    assert stats["accuracy"] == 0.5 and stats["reward_mean"] == pytest.approx(sum(s.reward for s in samples) / 4)


def test_a_one_file_environment_is_evaluated_on_eval_name_or_with_a_warning_and_each_prompt_once(policy_dir, tmp_path):
    """A jsonl:/math: environment has one split: its "held-out" accuracy was training accuracy, said
    nowhere, and an eval_size past the file repeated prompts (3 rows: 4 evaluated, one twice)."""
    from reasonrl.envs.registry import load_environment

    def rows(name, letters):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"prompt": f"Write the letter {c} many times.", "answer": c}) + "\n"
                                for c in letters))
        return f"jsonl:{path}?reward=exact"

    train_spec, test_spec = rows("train", "abc"), rows("test", "xy")
    overrides = {"env.name": train_spec, "env.eval_size": 7}
    cfg = load_config(None, config(policy_dir, tmp_path / "one", **overrides))
    seen = []
    with pytest.warns(UserWarning, match="no held-out split: the eval_\\* metrics measure training prompts"):
        trainer = Trainer(cfg, load_environment(train_spec), load_model(policy_dir), Tokenizer.from_dir(policy_dir),
                          console=False)
    trainer.rollout.evaluate = lambda prompts, env: seen.append(([p.id for p in prompts], env)) or {}
    trainer.evaluate()
    assert sorted(seen[0][0]) == ["train-1", "train-2", "train-3"] and seen[0][1] is trainer.env
    trainer.close()
    cfg = load_config(None, config(policy_dir, tmp_path / "two", **overrides, **{"env.eval_name": test_spec}))
    trainer = Trainer(cfg, load_environment(train_spec), load_model(policy_dir), Tokenizer.from_dir(policy_dir),
                      console=False)
    trainer.rollout.evaluate = lambda prompts, env: seen.append(([p.id for p in prompts], env)) or {}
    trainer.evaluate()
    assert sorted(seen[1][0]) == ["test-1", "test-2"] and seen[1][1] is trainer.eval_env is not trainer.env
    trainer.close()


def test_rollouts_in_another_dtype_run_on_a_cast_copy_kept_in_step_with_the_trained_weights(policy_dir, tmp_path):
    """rollout.dtype bfloat16 beside float32 master weights (what a GPU run gets by default from a
    bfloat16 checkpoint): the engine generates with its own bfloat16 copy, re-cast after each update;
    the default on CPU shares the policy itself."""
    shared = make_trainer(policy_dir, tmp_path / "shared", **{"train.steps": 1})
    assert shared.backend.engine.model is shared.policy
    trainer = make_trainer(policy_dir, tmp_path / "run", **{"train.steps": 2, "rollout.dtype": "bfloat16"})
    engine_model = trainer.backend.engine.model
    assert engine_model is not trainer.policy and trainer.policy.dtype == torch.float32
    assert engine_model.dtype == torch.bfloat16 and trainer.backend.engine.kv.dtype == torch.bfloat16
    initial = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    metrics = trainer.train()
    trained, served = trainer.policy.state_dict(), engine_model.state_dict()
    assert any(not torch.equal(initial[k], trained[k]) for k in trained)  # the update moved the master weights
    assert all(torch.equal(served[k], trained[k].to(torch.bfloat16)) for k in trained)  # and the copy followed
    assert metrics["logprob_mismatch"] > 0  # bfloat16 behaviour log-probs against float32 recomputed ones


def test_the_rollout_dtype_is_never_more_precise_than_half_precision_trained_weights(policy_dir, tmp_path):
    from reasonrl.models.loader import rollout_dtype

    assert rollout_dtype(None, torch.float32) is None and rollout_dtype(None, None) is None  # as inference loads
    assert rollout_dtype(None, torch.bfloat16) == "bfloat16" and rollout_dtype(None, "float16") == "float16"
    assert rollout_dtype("float32", torch.bfloat16) == "float32"  # asked for
    cfg = load_config(None, config(policy_dir, tmp_path / "run", **{"model.dtype": "bfloat16"}))
    policy = load_model(policy_dir, dtype=torch.bfloat16)
    trainer = Trainer(cfg, LetterEnvironment(), policy, Tokenizer.from_dir(policy_dir), console=False)
    assert trainer.backend.engine.model is policy  # shared, as before: no float32 copy of bfloat16 weights


def test_a_cast_copy_keeps_the_policys_rotary_frequencies(policy_dir):
    """inv_freq is not in the state dict, so a sync never carries it: the copy takes the policy's (built
    for its max_len, which a dynamic rope scales) instead of recomputing its own."""
    from reasonrl.models.loader import generation_model

    policy = load_model(policy_dir)
    policy.rotary.inv_freq = policy.rotary.inv_freq * 0.5
    copy = generation_model(policy, policy_dir, "bfloat16")
    assert copy is not policy and torch.equal(copy.rotary.inv_freq, policy.rotary.inv_freq)


def test_a_gpu_engine_beside_a_trainer_leaves_the_optimizer_state_out_of_its_kv_cache(monkeypatch):
    """The KV budget on CUDA is what is free when the engine starts; AdamW's state comes at the first
    update, and the cache allocated again for the next rollout must still fit beside it."""
    from reasonrl.engine.config import EngineConfig
    from reasonrl.rollout.backend import beside_trainer

    gib, cuda = 1 << 30, torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (60 * gib, 80 * gib))
    cfg = EngineConfig(gpu_memory_utilization=0.85)
    assert beside_trainer(cfg, cuda, 10 * gib).kv_cache_memory == int(80 * gib * 0.85) - 20 * gib - 10 * gib
    assert beside_trainer(cfg, cuda, 0) is cfg and beside_trainer(cfg, torch.device("cpu"), 10 * gib) is cfg
    assert beside_trainer(EngineConfig(kv_cache_memory=gib), cuda, 10 * gib).kv_cache_memory == gib  # as set
    with pytest.raises(ValueError, match="will allocate 50.0 GiB.*engine.kv_cache_memory"):
        beside_trainer(cfg, cuda, 50 * gib)


def test_the_update_frees_its_gradients_and_its_optimizer_state_is_the_size_it_reserves(policy_dir, tmp_path):
    trainer = make_trainer(policy_dir, tmp_path / "run", **{"train.steps": 1})
    trainer.train()
    assert all(p.grad is None for p in trainer.policy.parameters())  # not held through the next rollout
    moments = [v for state in trainer.update.optimizer.state.values() for k, v in state.items()
               if k in ("exp_avg", "exp_avg_sq")]
    assert sum(v.numel() * v.element_size() for v in moments) == trainer.update.state_bytes > 0
