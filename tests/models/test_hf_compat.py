"""Checkpoints reasonrl writes load the same in transformers: token ids and logits.

A client that tokenizes locally (or vLLM serving the same directory) must read prompts exactly as
reasonrl does. transformers 5 picks a tokenizer class from `model_type` and, for the Qwen family,
re-applies Qwen2's pre-tokenization whatever tokenizer.json says; reasonrl's tokenizers use those
rules, and list their special tokens in tokenizer_config.json, so both agree.
"""

import random

import pytest
import torch

from reasonrl.demo.policy import SHIPPED
from reasonrl.envs.sums import SumsEnvironment
from reasonrl.models import Tokenizer, load_model
from reasonrl.models.tiny import make_checkpoint, make_tokenizer

transformers = pytest.importorskip("transformers")


def strings(tok: Tokenizer, n: int = 300) -> list[str]:
    """Texts that stress pre-tokenization: digits, spaces, newlines, Unicode, special tokens, chats."""
    rng = random.Random(0)
    prompts = SumsEnvironment().prompts(40, seed=1)
    out = [tok.apply_chat_template(p.messages, tokenize=False) + "4+7=11 11+2=13 \\boxed{13}" for p in prompts]
    pieces = ["12", "345 + 6789", " ", "  ", "\n", "\n\n", "é", "ﬁ", "🙂", "x'll", "<|im_start|>", "<|im_end|>",
              "Add:", "\t", "3.14", "-7", "Ünï", "日本", "a" * 9]
    while len(out) < n:
        out.append("".join(rng.choice(pieces) for _ in range(rng.randint(1, 12))))
    return out


def assert_same_ids(path, tok: Tokenizer) -> None:
    theirs = transformers.AutoTokenizer.from_pretrained(path)
    for text in strings(tok):
        assert theirs(text, add_special_tokens=False)["input_ids"] == tok.encode(text, add_special_tokens=False), text


def assert_same_logits(path) -> None:
    ours = load_model(path, "cpu", torch.float32)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = torch.randint(3, ours.config.vocab_size, (3, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = theirs(ids).logits
        got = ours.compute_logits(ours.forward_padded(ids))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "llama"])
def test_tiny_checkpoints_tokenize_and_predict_the_same_in_transformers(family, tmp_path):
    tok = make_tokenizer(["Add: 4 + 7 + 2", "4+7=11 11+2=13 \\boxed{13}", "Ünïcödé 🙂 text"] * 30, 320)
    path = make_checkpoint(tmp_path / family, family, tok, std=0.2)
    assert_same_ids(path, tok)
    assert_same_logits(path)


def test_a_trained_runs_checkpoint_loads_the_same_in_transformers(tmp_path):
    from reasonrl.envs.letter import LetterEnvironment
    from reasonrl.rl.config import load_config
    from reasonrl.rl.trainer import Trainer

    tok = make_tokenizer(["Write the letter a many times. aaaa", "Add: 12 + 345"] * 30, 300)
    base = make_checkpoint(tmp_path / "base", "qwen2", tok)
    cfg = load_config(None, {"model.path": str(base), "train.run_dir": str(tmp_path / "run"), "train.steps": 1,
                             "env.name": "letter:a", "env.eval_size": 2, "rollout.prompts_per_step": 2,
                             "rollout.samples_per_prompt": 2, "rollout.max_tokens": 8, "optim.lr": 1e-2,
                             "engine.kv_cache_memory": "8MiB"})
    trainer = Trainer(cfg, LetterEnvironment("a"), load_model(base), tok, console=False)
    trainer.train()
    path = tmp_path / "run" / "checkpoints" / "step_000001"
    assert_same_ids(path, Tokenizer.from_dir(path))
    assert_same_logits(path)


def test_the_shipped_demo_policy_loads_the_same_in_transformers():
    assert_same_ids(SHIPPED, Tokenizer.from_dir(SHIPPED))
    assert_same_logits(SHIPPED)
