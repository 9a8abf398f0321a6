"""The policy update: PPO epochs and mini-batches, and the metrics a step reports."""

import math

import pytest
import torch

from reasonrl.envs.letter import LetterEnvironment
from reasonrl.models import Tokenizer, load_model
from reasonrl.models.tiny import make_checkpoint, make_tokenizer
from reasonrl.rl.batch import collate, response_logprobs
from reasonrl.rl.config import load_config
from reasonrl.rl.trainer import Trainer
from reasonrl.rl.update import PolicyUpdate, _split, lr_factor
from reasonrl.rollout.backend import RolloutBackend
from reasonrl.rollout.sample import Sample


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    tok = make_tokenizer(["Write the letter a many times. aaaa bbbb abab"] * 10, vocab_size=300)
    return make_checkpoint(tmp_path_factory.mktemp("policy") / "m", "qwen2", tok, hidden_size=64, num_layers=2)


def samples(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        prompt = torch.randint(5, 250, (int(torch.randint(3, 8, (1,), generator=g)),), generator=g).tolist()
        resp = torch.randint(5, 250, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g).tolist()
        out.append(Sample(prompt_ids=prompt, response_ids=resp, logprobs=[-5.0] * len(resp), versions=[0] * len(resp),
                          group_id=i // 4, index=i % 4))
    return out


def update_for(policy_dir, tmp_path, **overrides):
    cfg = load_config(None, {"model.path": str(policy_dir), "train.run_dir": str(tmp_path), "optim.lr": 1e-2,
                             **overrides})
    return PolicyUpdate(load_model(policy_dir), cfg, pad_id=0)


def test_one_epoch_of_one_minibatch_has_no_clipping_and_no_kl(policy_dir, tmp_path):
    stats = update_for(policy_dir, tmp_path)(samples(), [1.0, -1.0] * 4, version=0)
    assert stats["optimizer_steps"] == 1
    assert stats["approx_kl"] == 0 and stats["clip_fraction"] == 0  # ratio 1 everywhere, by construction


def test_ppo_epochs_and_minibatches_make_clipping_and_kl_real(policy_dir, tmp_path):
    update = update_for(policy_dir, tmp_path, **{"optim.ppo_epochs": 3, "optim.minibatches_per_epoch": 2})
    stats = update(samples(), [1.0, -1.0] * 4, version=0)
    assert stats["optimizer_steps"] == 6
    assert stats["approx_kl"] > 1e-4 and stats["clip_fraction"] > 0  # later mini-batches see a policy that moved
    assert stats["ratio_mean"] != 1.0


def test_old_logprobs_are_recomputed_before_the_first_step(policy_dir, tmp_path):
    """With several optimizer steps, the ratio is against the policy before the update, not the
    current one: the first mini-batch's old log-probs equal a fresh forward's."""
    update = update_for(policy_dir, tmp_path, **{"optim.ppo_epochs": 2})
    batch = samples(4)
    old = update._old_logprobs(batch)
    b = collate(batch, [0.0] * 4, 0, "cpu")
    with torch.no_grad():
        fresh = response_logprobs(update.policy, b)
    for i, s in enumerate(batch):
        torch.testing.assert_close(old[i], fresh[i, :len(s.response_ids)])


def test_entropy_is_the_mean_entropy_of_the_response_positions(policy_dir, tmp_path):
    update = update_for(policy_dir, tmp_path)
    batch = samples(4)
    b = collate(batch, [0.0] * 4, 0, "cpu")
    with torch.no_grad():
        hidden = update.policy.forward_padded(b.input_ids)
        logits = update.policy.compute_logits(hidden).float()
        expected = []
        for i, s in enumerate(batch):
            rows = logits[i, len(s.prompt_ids) - 1:len(s.prompt_ids) - 1 + len(s.response_ids)].log_softmax(-1)
            expected += (-(rows.exp() * rows).sum(-1)).tolist()
    stats = update(batch, [0.0] * 4, version=0)
    assert math.isclose(stats["entropy"], sum(expected) / len(expected), rel_tol=1e-5)


def test_split_and_lr_schedule():
    assert _split(list(range(7)), 3) == [[0, 1], [2, 3, 4], [5, 6]]
    assert _split([1, 2], 5) == [[1], [2]]
    assert lr_factor(0, 2, "cosine", 10) == 0.5 and lr_factor(2, 2, "cosine", 10) == 1.0
    assert lr_factor(10, 2, "cosine", 10) == pytest.approx(0.0) and lr_factor(5, 0, "constant", 10) == 1.0


class ScriptedBackend(RolloutBackend):
    """Not an engine: every sample answers with `reply` tokens at once. A trainer that needed an
    engine's internals would fail on it."""

    def __init__(self, reply):
        self.reply, self.pending, self.synced = reply, [], []

    def submit(self, key, prompt_ids, params, output_ids, output_logprobs):
        self.pending.append((key, params))

    def poll(self):
        from reasonrl.engine.sequence import CompletionOutput

        done, self.pending = self.pending, []
        return [(k, CompletionOutput(0, self.reply[:p.max_tokens], [-1.0] * len(self.reply[:p.max_tokens]), "", "stop"))
                for k, p in done]

    def abort_all(self):
        return []

    @property
    def num_running(self):
        return len(self.pending)

    def sync(self, policy, version):
        self.synced.append(version)


def test_the_trainer_runs_on_any_backend_and_reports_the_step_metrics(policy_dir, tmp_path):
    tok = Tokenizer.from_dir(policy_dir)
    cfg = load_config(None, {"model.path": str(policy_dir), "train.run_dir": str(tmp_path), "env.name": "letter:a",
                             "env.eval_size": 4, "train.steps": 2, "rollout.prompts_per_step": 2,
                             "rollout.samples_per_prompt": 2, "rollout.max_tokens": 4})
    backend = ScriptedBackend(tok.encode("aaab"))
    trainer = Trainer(cfg, LetterEnvironment("a"), load_model(policy_dir), tok, backend=backend, console=False)
    metrics = trainer.train()
    assert backend.synced == [0, 1, 2]  # the starting weights, then after each update
    for key in ("policy_loss", "entropy", "truncated_fraction", "step_seconds", "sync_seconds", "grad_norm",
                "eval_accuracy", "reward_mean", "lr"):
        assert key in metrics, key
    assert metrics["reward_mean"] == pytest.approx(0.75)  # "aaab" scores 3/4 on prompts asking for a


def test_the_reference_rotates_positions_as_the_policy_does(hf_checkpoint, tmp_path):
    """Dynamic NTK is fixed from the max_len a model is loaded with (rope.py): a reference loaded
    without the policy's max_len rotated differently, and the KL term was not 0 before any update."""
    path, _ = hf_checkpoint("llama", rope_parameters={"rope_type": "dynamic", "factor": 4.0, "rope_theta": 10000.0},
                            max_position_embeddings=32)
    cfg = load_config(None, {"model.path": str(path), "train.run_dir": str(tmp_path), "train.reference_model": True,
                             "loss.beta": 0.1, "engine.max_model_len": 128})
    policy = load_model(path, max_len=128)
    update = PolicyUpdate(policy, cfg, pad_id=0)
    batch = collate(samples(4), [0.0] * 4, 0, "cpu")
    with torch.no_grad():
        own = response_logprobs(policy, batch, 1.0)
    torch.testing.assert_close(update._reference_logp(batch), own, atol=0, rtol=0)


@pytest.mark.parametrize("loss", ["grpo", "gspo_token", "gspo", "dapo"])
def test_step_statistics_do_not_depend_on_the_micro_batch_split(policy_dir, tmp_path, loss):
    """Token means were merged by the loss's denominator, which is samples for GRPO: approx_kl
    moved by 65% with max_tokens_per_microbatch, which the docs say changes nothing."""
    stats = []
    for budget in (100_000, 1):
        torch.manual_seed(0)
        update = update_for(policy_dir, tmp_path / str(budget), **{"optim.ppo_epochs": 2, "loss.name": loss,
                                                                   "optim.max_tokens_per_microbatch": budget})
        stats.append(update(samples(), [1.0, -1.0, 0.5, -0.5] * 2, version=0))
    for key in ("approx_kl", "clip_fraction", "ratio_mean", "policy_loss", "entropy"):
        assert stats[0][key] == pytest.approx(stats[1][key], rel=1e-4, abs=1e-7), key
