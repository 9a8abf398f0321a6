"""Bad input to `generate`, `generate-image` and `report`: one line naming it, before the slow part."""

import io
import json

import pytest

from reasonrl.cli import main


def _one_line(capsys, message):
    err = capsys.readouterr().err
    assert "Traceback" not in err and message in err and err.count("\n") == 1


@pytest.mark.parametrize("args, stdin, message", [
    (["generate", "--model", "reasonrl/demo/policy", "--chat", "ok", "Add: 1 + \udcff 2"], "",
     "prompt 2 is not valid UTF-8"),  # a byte that is not UTF-8 reaches argv as a lone surrogate
    (["generate", "--model", "reasonrl/demo/policy"], "ok\nAdd: 1 + \udcff 2\r\n", "prompt 2 is not valid UTF-8"),
    (["generate-image", "--out", "{tmp}/out"], "a red \udcff circle\n", "prompt 1 is not valid UTF-8"),
    (["generate", "--model", "{tmp}/afile", "hi"], "", "checkpoint {tmp}/afile is not a directory"),
])
def test_a_bad_prompt_or_model_is_one_line(tmp_path, capsys, monkeypatch, args, stdin, message):
    """The prompts were TypeErrors from the tokenizer; a file as --model was said not to exist."""
    (tmp_path / "afile").write_text("")
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    assert main([a.format(tmp=tmp_path) for a in args]) == 2
    _one_line(capsys, message.format(tmp=tmp_path))
    assert not (tmp_path / "out").exists()


def test_a_crlf_prompt_on_stdin_loses_its_carriage_return(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("Add: 1 + 2\r\n"))
    assert main(["generate", "--model", "reasonrl/demo/policy", "--max-tokens", "1"]) == 0
    assert capsys.readouterr().out.startswith("### Add: 1 + 2\n")


@pytest.mark.parametrize("args, message", [
    (["--temperature", "0.1"], "--temperature does not apply to this model, a diffusion generator"),
    (["--model", "reasonrl/vision/gen/shipped/ar", "--steps", "3"], "--steps does not apply to this model, an AR generator"),
    (["--out", "{tmp}/afile"], "--out {tmp}/afile is a file, not a directory"),
])
def test_generate_image_refuses_before_sampling(tmp_path, capsys, monkeypatch, args, message):
    """An option of the other kind of generator changed nothing; a file as --out failed after sampling."""
    from reasonrl.vision.binary import generate_images

    def sampled(*_):
        raise AssertionError("sampled")

    (tmp_path / "afile").write_text("")
    monkeypatch.setattr(generate_images, "generate", sampled)
    args = ["generate-image", "--prompts", "a red circle", "--out", str(tmp_path / "out"), *args]
    assert main([a.format(tmp=tmp_path) for a in args]) == 2
    _one_line(capsys, message.format(tmp=tmp_path))


def test_each_generator_takes_its_own_option_and_its_default(tmp_path):
    from reasonrl.vision.binary.generate_images import default_model
    from reasonrl.vision.binary.generator import load_pipeline
    from reasonrl.vision.binary.sample import SampleConfig, sampler_options

    pipe = load_pipeline(default_model())
    assert sampler_options(pipe, SampleConfig()) == {} and sampler_options(pipe, SampleConfig(steps=3)) == {"steps": 3}
    with pytest.raises(ValueError, match="--temperature does not apply"):
        sampler_options(pipe, SampleConfig(temperature=1.0))  # the old default, given: refused too


def _run(tmp_path, lines):
    (tmp_path / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    return str(tmp_path)


def test_report_skips_damaged_metrics_rows_with_a_warning(tmp_path, capsys, caplog):
    """A row without a step, a step that is not an integer, a plotted value that is not a number:
    KeyError or TypeError from the report."""
    good = [json.dumps({"step": s, "reward_mean": 0.5, "rollout_seconds": 1.0}) for s in range(3)]
    bad = [json.dumps(r) for r in ({"reward_mean": 0.5}, {"step": "2", "reward_mean": 0.5}, {"step": [1]},
                                   {"step": True}, {"step": 3, "reward_mean": [0.5]}, {"step": 4, "loss": "x"},
                                   {"step": 5, "eval_accuracy/count": {}})]
    run = _run(tmp_path, [good[0], *bad, *good[1:]])
    assert main(["report", run]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "| steps | 2 |" in text and "| reward_first | 0.5 |" in text
    skipped = [r for r in caplog.records if "skipped (not a metrics record)" in r.getMessage()]
    assert [r.getMessage().split(":")[1] for r in skipped] == [str(n) for n in range(2, 9)]


@pytest.mark.parametrize("summary", ["[1, 2]", "{oops", '"text"'])
def test_report_ignores_a_damaged_summary_json_naming_it(tmp_path, capsys, caplog, summary):
    """A list was an AttributeError; unparsable JSON failed the report without naming the file."""
    run = _run(tmp_path, [json.dumps({"step": 0, "reward_mean": 0.5})])
    (tmp_path / "summary.json").write_text(summary)
    assert main(["report", run]) == 0
    assert "| steps | 0 |" in (tmp_path / "report.md").read_text()
    assert f"{tmp_path / 'summary.json'}: ignored" in caplog.text
