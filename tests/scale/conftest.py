import pytest

from reasonrl.models.tiny import make_checkpoint, make_tokenizer


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole test session (4 CPUs: two engine actors, two trainer ranks)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def policy_dir(tmp_path_factory):
    """A tiny random Qwen2 checkpoint (it rarely emits EOS: samples run to max_tokens)."""
    tok = make_tokenizer(["Write the letter a many times. aaaa bbbb abab", "hello world 123"] * 10, vocab_size=300)
    return make_checkpoint(tmp_path_factory.mktemp("policy") / "m", "qwen2", tok, hidden_size=64, num_layers=2)
