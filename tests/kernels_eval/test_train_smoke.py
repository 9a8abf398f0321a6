"""`reasonrl train` on the kernel environment: one GRPO step of a tiny random policy runs, every
sample is judged by the sandboxed evaluator, and the (garbage) answers score 0 without an error."""

from reasonrl.envs.kernels import KernelEnvironment, KernelRewardConfig, select_tasks
from reasonrl.envs.kernels.evaluate import EvaluatorConfig, SandboxLimits
from reasonrl.envs.kernels.suite import TASKS
from reasonrl.models import Tokenizer, load_model
from reasonrl.models.tiny import make_checkpoint, make_tokenizer
from reasonrl.rl.config import load_config
from reasonrl.rl.metrics import read_metrics
from reasonrl.rl.trainer import Trainer


def test_one_grpo_step_on_kernel_tasks(tmp_path):
    tasks = select_tasks(TASKS, ids="vector_add,flip,row_sum,softmax")
    env = KernelEnvironment(tasks, reward=KernelRewardConfig(holdout=0.5), evaluator_config=EvaluatorConfig(workers=2),
                            limits=SandboxLimits(timeout=20.0))
    corpus = [p.messages[-1]["content"] for p in env.prompts(split="all")] * 3
    policy = make_checkpoint(tmp_path / "policy", "qwen2", make_tokenizer(corpus, vocab_size=320), hidden_size=64,
                             num_layers=2)
    cfg = load_config(None, {"model.path": str(policy), "train.run_dir": str(tmp_path / "run"), "env.name": "kernels",
                             "env.eval_size": 2, "rollout.max_tokens": 16, "rollout.prompts_per_step": 2,
                             "rollout.samples_per_prompt": 2, "engine.kv_cache_memory": 1 << 26,
                             "engine.max_model_len": 4096, "train.steps": 1, "train.save_every": 100})
    try:
        Trainer(cfg, env, load_model(policy), Tokenizer.from_dir(policy), console=False).train()
    finally:
        env.close()
    rows = [r for r in read_metrics(tmp_path / "run") if "reward_mean" in r]
    assert len(rows) == 1 and rows[0]["reward_mean"] == 0.0
    assert len(env._verdicts) >= 4 and all(v.status == "no_code" for v in env._verdicts.values())
