import pytest

from reasonrl.rl.config import ConfigError, load_config


def write(tmp_path, text):
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return p


def test_yaml_maps_onto_sections(tmp_path):
    cfg = load_config(write(tmp_path, """
model: /ckpt
rollout: {prompts_per_step: 4, samples_per_prompt: 8, over_provision: 2}
loss: {name: dapo}
optim: {lr: 1e-6, betas: [0.9, 0.95]}
engine: {max_num_seqs: 32}
"""))
    assert cfg.model.path == "/ckpt" and cfg.rollout.over_provision == 2.0 and cfg.loss.name == "dapo"
    assert cfg.optim.lr == 1e-6 and cfg.optim.betas == (0.9, 0.95) and cfg.engine.max_num_seqs == 32


@pytest.mark.parametrize("text,key", [
    ("model: /c\nrollout: {over_provision: 0.5}", "rollout.over_provision"),
    ("model: /c\nrollout: {prompts_per_step: two}", "rollout.prompts_per_step"),
    ("model: /c\nrollout: {promts_per_step: 2}", "rollout.promts_per_step"),
    ("model: /c\nroll: {}", "roll"),
    ("model: /c\nloss: {name: ppo2}", "loss"),
    ("model: /c\nloss: {beta: 0.1}", "loss.beta"),
    ("model: /c\nrollout: {samples_per_prompt: 1}", "rollout.samples_per_prompt"),  # trained nothing, silently
    # the first launch passed the budget: 8 groups launched under a budget of 4
    ("model: /c\nrollout: {prompts_per_step: 4, over_provision: 2.0, dynamic_sampling: true, max_groups_per_step: 4}",
     "rollout.max_groups_per_step: must be at least the groups a step launches at once, ceil(prompts_per_step x "
     "over_provision) = 8"),
    ("model: /c\noptim: {betas: [0.9]}", "optim.betas"),
    ("model: /c\noptim: {lr: .inf}", "optim.lr"),  # trained one step into weights of inf, then nan
    ("model: /c\noptim: {schedule: linear}", "optim.schedule"),
    ("model: /c\nengine: {max_num_seqs: 0}", "engine"),
    ("model: /c\ntrain: {steps: true}", "train.steps"),
    ("rollout: {}", "model.path"),
    ("- just a list", "top level"),
])
def test_bad_configs_fail_at_load_naming_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert key in str(err.value)


def test_overrides_and_missing_file(tmp_path):
    cfg = load_config(write(tmp_path, "model: /c"), {"rollout.max_tokens": 64, "train.run_dir": "/tmp/x"})
    assert cfg.rollout.max_tokens == 64 and cfg.train.run_dir == "/tmp/x"
    with pytest.raises(ConfigError, match="section.key"):
        load_config(None, {"nodot": 1})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_engine_section_turns_on_speculative_decoding_and_kv_formats(tmp_path):
    cfg = load_config(write(tmp_path, """
model: /ckpt
engine: {draft: /ckpt/draft, draft_depth: 4, kv_options: {}}
"""))
    assert cfg.engine.draft == "/ckpt/draft" and cfg.engine.draft_depth == 4 and cfg.engine.draft_top_k == 8
    with pytest.raises(ConfigError, match="draft_depth"):
        load_config(write(tmp_path, "model: /ckpt\nengine: {draft_depth: 0}\n"))


def test_env_name_defaults_to_the_demos_task_and_an_unknown_one_fails_at_load(tmp_path):
    from reasonrl.envs.registry import load_environment

    cfg = load_config(write(tmp_path, "model: /c"))  # a recipe without an env section
    assert cfg.env.name == "sums:" and load_environment(cfg.env.name).name
    with pytest.raises(ConfigError, match=r"env\.name: unknown environment 'count'.*known: .*sums"):
        load_config(write(tmp_path, "model: /c\nenv: {name: count}"))


def test_set_takes_a_text_key_as_typed():
    """`--set` read every value as YAML: `a # b` lost its `# b` (a comment) and `2024` became a number,
    then refused as one for a text key."""
    from reasonrl.cli.train import parse_overrides
    from reasonrl.data.sand.sections import section_types

    got = parse_overrides(["train.run_dir=runs/a # b", "env.name=2024", "env.eval_name=null", "model.device=",
                           "optim.lr=0.5 # a comment", "rollout.max_tokens=8", "optim.betas=[0.9, 0.95]",
                           "rollout.chat_template_kwargs={enable_thinking: false}", "train.trackers=[tensorboard]"])
    assert got == {"train.run_dir": "runs/a # b", "env.name": "2024", "env.eval_name": None, "model.device": None,
                   "optim.lr": 0.5, "rollout.max_tokens": 8, "optim.betas": [0.9, 0.95],
                   "rollout.chat_template_kwargs": {"enable_thinking": False}, "train.trackers": ["tensorboard"]}
    cfg = load_config(None, {"model.path": "/c", **parse_overrides(["train.run_dir=2024", "model.path=m #1"])})
    assert cfg.train.run_dir == "2024" and cfg.model.path == "m #1"
    prompt = "Reason step by step. # Answer in \\boxed{}: 2024"  # sand's solver prompt, a text key of its own sections
    assert parse_overrides([f"solve.system_prompt={prompt}"], section_types()) == {"solve.system_prompt": prompt}
    with pytest.raises(ConfigError, match=r"^rollout.max_tokens: expected int, got 'many'$"):
        load_config(None, {"model.path": "/c", **parse_overrides(["rollout.max_tokens=many"])})
    # quoted as in a recipe file, a text key is the text inside the quotes (the quotes were kept)
    assert parse_overrides(["model.path='my model'", 'env.name="null"', "train.run_dir=' a'", "model.device='"]) == {
        "model.path": "my model", "env.name": "null", "train.run_dir": " a", "model.device": "'"}
    with pytest.raises(ValueError, match="model.path: .* is not valid YAML"):
        parse_overrides(["model.path='it's'"])


def test_an_empty_section_is_all_defaults_and_a_section_that_is_no_mapping_is_refused(tmp_path):
    """`train:` with every key commented out is `train: null` to YAML, and was refused."""
    cfg = load_config(write(tmp_path, "model: /c\ntrain:\n  # steps: 3\noptim:\n"))
    assert cfg.train.steps == 100 and cfg.optim.lr == 1e-5
    assert load_config(write(tmp_path, "model: /c\ntrain:\n"), {"train.steps": 3}).train.steps == 3
    for text in ("model: /c\ntrain: [steps, 3]", "model: /c\ntrain: 3"):
        with pytest.raises(ConfigError, match="^train: must be a mapping"):
            load_config(write(tmp_path, text))
        with pytest.raises(ConfigError, match="^train: must be a mapping"):
            load_config(write(tmp_path, text), {"train.steps": 3})
