"""Colocated training on a GPU: float32 master weights, rollouts on a bfloat16 copy (rollout.dtype's
default there: the checkpoint's dtype), the KV budget leaving room for AdamW's state. CPU runs skip
these (tests/rl/test_trainer.py covers the same paths with rollout.dtype set and a faked device)."""

import pytest
import torch

from reasonrl.envs.letter import LetterEnvironment
from reasonrl.models import Tokenizer, load_model
from reasonrl.models.loader import save_model
from reasonrl.models.tiny import make_checkpoint, make_tokenizer
from reasonrl.rl.config import load_config
from reasonrl.rl.trainer import Trainer

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_policy")
    tok = make_tokenizer(["Write the letter a many times. aaaa bbbb abab"] * 10, vocab_size=300)
    fp32 = make_checkpoint(root / "fp32", "qwen2", tok, hidden_size=64, num_layers=2)
    return save_model(load_model(fp32, "cpu", torch.bfloat16), root / "bf16", Tokenizer.from_dir(fp32))


def test_a_gpu_run_trains_float32_and_rolls_out_on_a_synced_bfloat16_copy(bf16_checkpoint, tmp_path):
    cfg = load_config(None, {"model.path": str(bf16_checkpoint), "model.device": "cuda", "model.dtype": "float32",
                             "train.run_dir": str(tmp_path / "run"), "train.steps": 2, "env.name": "letter",
                             "env.eval_size": 8, "rollout.max_tokens": 16, "rollout.prompts_per_step": 4,
                             "rollout.samples_per_prompt": 8, "optim.lr": 1e-2, "train.save_every": 100,
                             "engine.gpu_memory_utilization": 0.5})
    policy = load_model(bf16_checkpoint, "cuda", "float32")
    trainer = Trainer(cfg, LetterEnvironment(), policy, Tokenizer.from_dir(bf16_checkpoint), console=False)
    engine = trainer.backend.engine
    assert engine.model is not policy and engine.model.dtype == torch.bfloat16 and engine.kv.dtype == torch.bfloat16
    assert engine.config.kv_cache_memory is not None  # sized beside the trainer: what was free less AdamW's state
    try:
        metrics = trainer.train()  # the cache released for each update and allocated again beside AdamW's state
    finally:
        trainer.close()
    assert all(p.grad is None for p in policy.parameters())
    served, trained = engine.model.state_dict(), policy.state_dict()
    assert all(torch.equal(served[k], v.to(torch.bfloat16)) for k, v in trained.items())
    assert 0 < metrics["logprob_mismatch"] < 1
