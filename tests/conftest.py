import os
import shutil

# Without a GPU, Triton kernels run in its interpreter; the flag must be set before triton is imported.
if not shutil.which("nvidia-smi"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

FAMILIES = {
    "llama": ("LlamaForCausalLM", "LlamaConfig"),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config"),
    "qwen3": ("Qwen3ForCausalLM", "Qwen3Config"),
}
CORPUS = [
    "The quick brown fox jumps over the lazy dog. 12 + 30 = 42.",
    "Alice places a white stone at E. Where should Bob play next? \\boxed{C}",
    "def add(a, b):\n    return a + b\n",
    "Ünïcödé text, emoji 🙂 and numbers 3.14159 are tokenized byte by byte.",
] * 20


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tokenizer():
    from reasonrl.models.tiny import make_tokenizer

    return make_tokenizer(CORPUS, vocab_size=384)


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
    """Factory: a random transformers model of `family`, saved to a temp dir -> (path, hf_model).

    initializer_range is larger than usual so random logits are peaked: greedy decoding then has
    clear winners and token-exact comparisons test the engine, not float ties."""
    import transformers

    cache = {}

    def make(family="qwen2", tokenizer=None, max_shard_size=None, legacy_config=False, **overrides):
        key = (family, id(tokenizer), max_shard_size, legacy_config, tuple(sorted((k, str(v)) for k, v in overrides.items())))
        if key in cache:
            return cache[key]
        model_cls, config_cls = (getattr(transformers, n) for n in FAMILIES[family])
        kw = dict(vocab_size=tokenizer.vocab_size if tokenizer else 256, hidden_size=64, intermediate_size=128,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  initializer_range=0.2, tie_word_embeddings=False)
        if tokenizer is not None:
            kw["eos_token_id"] = tokenizer.eos_token_ids[0]
        kw.update(overrides)
        torch.manual_seed(len(cache))
        model = model_cls(config_cls(**kw)).eval()
        path = tmp_path_factory.mktemp(f"{family}_ckpt")
        model.save_pretrained(path, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
        if legacy_config:
            _to_legacy_config(path)
        if tokenizer is not None:
            tokenizer.save(path)
        cache[key] = (path, model)
        return cache[key]

    return make


def _to_legacy_config(path):
    """Rewrite transformers>=5 `rope_parameters` into the rope_theta/rope_scaling keys hub checkpoints carry."""
    import json

    cfg = json.loads((path / "config.json").read_text())
    params = cfg.pop("rope_parameters", {})
    cfg["rope_theta"] = params.pop("rope_theta", 10000.0)
    if params.get("rope_type", "default") != "default":
        params["type"] = params.pop("rope_type")
        cfg["rope_scaling"] = params
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.fixture
def ctrl_c_in_train_step(monkeypatch):
    """`Trainer.train_step` sends this process a SIGINT (a Ctrl-C) when it starts step 1; calling the
    fixture's value puts the real step back."""
    import os
    import signal

    from reasonrl.rl.trainer import Trainer

    step = Trainer.train_step

    def interrupted(self):
        if self.step == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return step(self)

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    return lambda: monkeypatch.setattr(Trainer, "train_step", step)
