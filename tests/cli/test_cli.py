"""The command line: flags generated from config dataclasses, one subcommand per workload."""

import dataclasses
import subprocess
import sys

import pytest

from reasonrl import __version__
from reasonrl.cli import main
from reasonrl.config import ConfigError, coerce, parse_size, type_hints
from reasonrl.engine.config import EngineConfig
from reasonrl.rl.config import load_config


def test_version_and_help_import_no_torch():
    code = ("import sys; from reasonrl.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False") and "commands:" in out and "bench" in out
    version = subprocess.run([sys.executable, "-m", "reasonrl.cli", "--version"], capture_output=True, text=True)
    assert version.stdout.strip() == f"reasonrl {__version__}"


def test_each_bench_workload_has_only_its_own_flags_with_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "kv", "--help"])
    text = capsys.readouterr().out
    assert "--model-shape {8x64,32x128}" in text and "--concurrency" not in text and "--num-prompts" not in text
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "kv", "--concurrency", "4"])  # another workload's flag
    assert exit_.value.code == 2 and "unrecognized arguments: --concurrency" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "engine", "--help"])
    assert "--concurrency N" in (text := capsys.readouterr().out) and "(default: 64)" in text


def test_every_engine_flag_shows_the_dataclass_default(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(EngineConfig):
        if f.name == "seed":  # generate's --seed is the request's (SamplingParams)
            continue
        flag = "--" + f.metadata.get("flag", f.name.replace("_", "-"))
        assert flag in text, flag
    assert "--max-num-seqs N Sequences decoded together at most. (default: 256)" in text
    assert "--temperature X 0 means greedy;" in text and "(default: 0.0)" in text  # generate's own default, greedy


def test_generate_help_says_what_an_unset_seed_does(capsys):
    """It said `--seed N ... (default: none)`, yet unseeded outputs repeat: the engine draws seeds from seed 0."""
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    seed = text[text.index("--seed N Per-request"):text.index("--max-tokens N Response")]
    assert "(default: none)" not in seed and "Unset (the default), the engine draws the request's seed" in seed
    assert "seeded with EngineConfig.seed (0 unless set)" in seed and "repeat their outputs" in seed


def test_an_unseeded_request_draws_its_seed_in_arrival_order_from_the_engine_seed():
    """What the --seed help says: seeds come from random.Random(EngineConfig.seed), one per request in order."""
    import random

    from reasonrl.engine import LLM, SamplingParams

    params = SamplingParams(temperature=1.0, max_tokens=3)
    prompts = ["Add: 1 + 2", "Add: 3 + 4"]
    first, again = (LLM("reasonrl/demo/policy", device="cpu").generate(prompts, params) for _ in range(2))
    rng = random.Random(0)
    assert [o.outputs[0].seed for o in first] == [rng.randrange(1 << 62) for _ in prompts]
    assert [o.outputs[0].token_ids for o in first] == [o.outputs[0].token_ids for o in again]
    swapped = LLM("reasonrl/demo/policy", device="cpu").generate(prompts[::-1], params)
    assert [o.outputs[0].seed for o in swapped] == [o.outputs[0].seed for o in first]  # by place, not by prompt


def test_data_lvr_refuses_a_text_only_checkpoint_up_front(tmp_path, capsys):
    """A Qwen2 directory was taken: its missing image preprocessing silently meant the defaults."""
    from reasonrl.models.tiny import make_checkpoint

    model = make_checkpoint(tmp_path / "qwen2")
    assert main(["data", "lvr", "--model", str(model), "--out", str(tmp_path / "lvr"), "--n", "2"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1
    assert f"model {model} is a qwen2 model (architectures ['Qwen2ForCausalLM']), not a vision-language" in err
    assert "needs a Qwen2.5-VL one (Qwen2_5_VLForConditionalGeneration)" in err
    assert not (tmp_path / "lvr").exists()


def test_sizes_with_units_in_recipes_flags_and_python(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: /c\nengine: {kv_cache_memory: 64MiB}\n")  # a recipe accepts what the CLI accepts
    assert load_config(recipe).engine.kv_cache_memory == 64 << 20
    assert EngineConfig(kv_cache_memory="1.5GiB").kv_cache_memory == 3 << 29
    assert parse_size("2GB") == 2 * 10 ** 9 and parse_size(4096) == 4096
    recipe.write_text("model: /c\nengine: {kv_cache_memory: lots}\n")
    with pytest.raises(ConfigError, match=r"engine.kv_cache_memory: not a size: 'lots' \(examples: 512MiB"):
        load_config(recipe)
    with pytest.raises(SystemExit):
        main(["generate", "--model", "x", "--kv-cache-memory", "lots", "hi"])
    assert "--kv-cache-memory: not a size: 'lots'" in capsys.readouterr().err


def test_an_optional_fields_error_names_its_choices_or_reason():
    """`model.dtype: expected Optional, got 'bf16'`, and a size of 0 reported as not a size."""
    from reasonrl.rl.config import ModelSection

    hints = type_hints(ModelSection)
    with pytest.raises(ConfigError, match="model.dtype: expected one of float32, bfloat16, float16, got 'bf16'"):
        coerce("model.dtype", hints["dtype"], "bf16")
    with pytest.raises(ConfigError, match="must be a positive number of bytes, got 0"):
        coerce("engine.kv_cache_memory", type_hints(EngineConfig)["kv_cache_memory"], 0)
    assert coerce("model.dtype", hints["dtype"], None) is None


def test_generate_without_prompts_is_a_usage_error(monkeypatch, capsys):
    """`--stop "=" "Add: 2 + 3"` took the prompt as a second stop string: nothing ran, exit 0."""
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["generate", "--model", "reasonrl/demo/policy", "--stop", "=", "Add: 2 + 3"]) == 2
    assert "no prompts: give them as arguments (before --stop, or after --)" in capsys.readouterr().err


def test_coercion_is_strict():
    hints = type_hints(EngineConfig)
    with pytest.raises(ConfigError):
        coerce("engine.max_num_seqs", hints["max_num_seqs"], "2")  # no silent str -> int
    with pytest.raises(ConfigError):
        coerce("engine.enable_prefix_caching", hints["enable_prefix_caching"], 1)  # no int -> bool
    with pytest.raises(ConfigError, match="expected one of coupled, residual"):
        coerce("engine.draft_sampling", hints["draft_sampling"], "greedy")
    assert coerce("x", float, 3) == 3.0 and coerce("x", tuple[float, float], [1, 2]) == (1.0, 2.0)


def test_bad_input_is_one_line_naming_it(tmp_path, capsys):
    assert main(["bench", "engine", "--repeats", "0"]) == 2
    assert capsys.readouterr().err.strip() == "reasonrl bench engine: error: repeats must be at least 1, got 0"
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "config file" in capsys.readouterr().err
    assert main(["data", "ttt", "--game", "oTTT", "--out", str(tmp_path / "t.jsonl"), "--n", "3"]) == 0


@pytest.mark.parametrize("args, message", [
    (["data", "ttt", "--game", "oTTT", "--out", "{afile}/t.jsonl", "--n", "3"], "afile"),  # an OSError: was a traceback
    (["generate", "--model", "reasonrl/demo/policy", "--device", "gpu", "hi"], "unknown device 'gpu'"),
    (["sft", "--model", "m", "--data", "d", "--out", "o", "--epochs", "0"], "epochs: must be a finite number > 0"),
    (["sft", "--model", "m", "--data", "d", "--out", "o", "--samples-per-step", "0"], "samples_per_step: must be >= 1"),
    (["sft", "--model", "m", "--data", "d", "--out", "o", "--epochs", "inf"], "epochs: must be a finite number > 0"),
    (["train", "--set", "env.eval_size=0"], "env.eval_size: must be >= 1"),
    (["generate-image", "--per-prompt", "0", "--prompts", "a"], "per_prompt must be >= 1"),  # torch.cat() of nothing
    (["train-image", "layout-grpo", "--policy", "p", "--out", "{afile}.run", "--layouts-per-step", "0"],
     "layouts_per_step must be a positive integer"),  # a reshape traceback
    (["train-image", "layout-grpo", "--policy", "p", "--out", "{afile}.run", "--samples-per-layout", "1"],
     "samples_per_layout must be >= 2"),  # trained with zero gradient, silently
    (["train-image", "layout-grpo", "--policy", "p", "--out", "{afile}.run", "--in-box-weight", "-1"],
     "in_box_weight must be a finite number > 0"),  # flipped the in-box advantages
    (["train-image", "smarli", "--out", "{afile}.run", "--layouts-per-step", "0"],
     "layouts_per_step must be a positive integer"),
    (["data", "lvr", "--model", "{afile}.none", "--out", "{afile}.lvr"], "is not a checkpoint directory"),
    (["bench", "structured", "--repeats", "0"], "repeats must be at least 1"),  # an UnboundLocalError
    (["bench", "engine", "--prompt-len", "8", "4"], "prompt_len must be two lengths, shortest first"),
])
def test_more_bad_input_is_one_line(tmp_path, capsys, args, message):
    (tmp_path / "afile").write_text("")
    assert main([a.format(afile=tmp_path / "afile") for a in args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and message in err and err.count("\n") == 1


def test_an_environment_spec_passes_through_set_as_typed():
    from reasonrl.cli.train import parse_overrides

    assert parse_overrides(["env.name=sums:", "env.name=math:data/x.jsonl?key=answer"]) == {"env.name": "math:data/x.jsonl?key=answer"}
    assert parse_overrides(["env.name=sums:"]) == {"env.name": "sums:"}  # was {"sums": None}
    assert parse_overrides(["a.b={x: 1}", "a.c=[0.8, 0.9]", "a.d=3"]) == {"a.b": {"x": 1}, "a.c": [0.8, 0.9], "a.d": 3}


def test_report_draws_held_out_evaluations_as_points(tmp_path, monkeypatch):
    import json

    import matplotlib.axes

    from reasonrl.rl.report import write_report

    rows = [{"step": s, "reward_mean": s / 10, "accuracy": s / 10} for s in range(1, 9)]
    rows[0]["eval_accuracy"], rows[-1]["eval_accuracy"] = 0.1, 0.9
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    drawn = []
    original = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda self, *a, **k: drawn.append(k) or original(self, *a, **k))
    write_report(tmp_path)
    styles = {k["label"]: k.get("linestyle") for k in drawn}
    assert styles["held-out (greedy)"] == "none" and styles["train"] is None  # points vs a per-step line


def _command_paths(table: dict, prefix: tuple[str, ...] = ()):
    """Every runnable command line prefix: each verb, and each subcommand of a table of them."""
    from reasonrl.cli import Command

    for name, command in table.items():
        target = command.resolve() if isinstance(command, Command) else command
        if isinstance(target, dict):
            yield from _command_paths(target, (*prefix, name))
        else:
            yield (*prefix, name)


def test_every_command_renders_its_help(capsys):
    """argparse formats help strings with %: a stray percent sign in a docstring-made help text
    breaks --help of that command (it did for distill-draft's --gate-cost)."""
    from reasonrl.cli import VERBS

    paths = list(_command_paths(VERBS))
    assert ("distill-draft",) in paths and ("bench", "spec") in paths and len(paths) > 30
    for path in paths:
        with pytest.raises(SystemExit) as exit_:
            main([*path, "--help"])
        assert exit_.value.code == 0, path
        assert "usage:" in capsys.readouterr().out, path


def test_ctrl_c_outside_a_jobs_stop_handler_is_one_line_and_exit_130(capsys):
    """Ctrl-C while an engine was starting, or a second Ctrl-C ("stop at once"), printed a traceback."""
    import argparse

    from reasonrl.cli import _run

    def starting(args):
        raise KeyboardInterrupt

    assert _run(starting, argparse.Namespace(), "reasonrl train") == 130
    err = capsys.readouterr().err
    assert err.strip() == "reasonrl train: interrupted; nothing was saved since the last checkpoint"


def test_ctrl_c_while_a_command_imports_is_one_line_and_exit_130(capsys, monkeypatch):
    """Imports and flag building run before the command's own handler: a traceback from inside sympy or torch."""
    from reasonrl import cli

    def importing(target):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "resolve", importing)
    assert cli.main(["eval", "sums:"]) == 130
    assert capsys.readouterr().err.strip() == "reasonrl: interrupted"


def test_a_diverged_run_from_any_entry_point_is_one_line_and_exit_1(capsys):
    """The demo and the benches train without run_training: a TrainingDiverged traceback whose advice
    read "no checkpoint yet ... go on from the checkpoint"."""
    import argparse

    from reasonrl.cli import _run
    from reasonrl.rl.update import TrainingDiverged

    def diverging(args):
        raise TrainingDiverged(2, 1, 1, None)

    assert _run(diverging, argparse.Namespace(), "reasonrl train") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("reasonrl train: error: step 2: 1 of 1 optimizer steps") and "\n" not in err
    assert "no checkpoint yet" in err and "start again" in err and "checkpoint to go on" not in err
