"""Long `generate` and `generate-image` jobs (and eval, SAND stages) say how far they are on stderr; stdout
(results) is unchanged. One line shape, `reasonrl.progress.Progress`: whole lines, rewritten in place on a terminal."""

import io
import re
from types import SimpleNamespace

import pytest

from reasonrl.cli import main
from reasonrl.cli.image import GenerateImageJob
from reasonrl.data.sand.calls import ProgressLine
from reasonrl.eval.progress import EvalProgress
from reasonrl.progress import Progress, check_interval

PROMPTS = ["Add: 1 + 2", "Add: 3 + 4", "Add: 5 + 6"]
TIME = re.compile(r"\([0-9.]+ s[^)]*\)$")


def test_progress_lines_are_whole_lines_and_quick_jobs_print_none():
    stream = io.StringIO()
    quick = Progress("job", 3, "prompts", every=float("inf"), stream=stream)
    for done in range(1, 4):
        quick.update(done)
    quick.close()
    assert stream.getvalue() == ""  # (the default, 5 s: none for a job quicker than that)
    details = iter(["12 tokens"])
    every = Progress("job", 3, "prompts", every=0, stream=stream, detail=lambda: next(details, ""))
    every.update(0)
    every.update(2)
    every.every = float("inf")
    every.update(3)  # not shown yet
    every.close()  # the last count
    every.close()  # shown: not again
    lines = stream.getvalue().splitlines()
    assert [TIME.sub("", line) for line in lines] == ["job: 0/3 prompts done ", "job: 2/3 prompts done ",
                                                      "job: 3/3 prompts done "]
    assert lines[0].endswith(", 12 tokens)") and "\r" not in stream.getvalue()


def test_generate_reports_progress_on_stderr_and_leaves_stdout_alone(capsys):
    """Many prompts printed nothing until all were done: a long job looked hung."""
    args = ["generate", "--model", "reasonrl/demo/policy", "--max-tokens", "2", *PROMPTS]
    assert main([*args, "--progress-every", "inf"]) == 0
    quiet = capsys.readouterr()
    assert main([*args, "--progress-every", "0"]) == 0
    loud = capsys.readouterr()
    assert loud.out == quiet.out and loud.out.startswith(f"### {PROMPTS[0]}\n") and "done" not in loud.out
    assert "prompts done" not in quiet.err
    lines = loud.err.splitlines()
    assert lines and all(re.fullmatch(r"generate: [0-3]/3 prompts done \([0-9.]+ s, [0-9,]+ tokens, .*\)", line)
                         for line in lines), loud.err
    assert lines[-1].startswith("generate: 3/3 prompts done (")
    assert main([*args, "--chat", "--progress-every", "0"]) == 0  # (chat prompts go the same way)
    assert capsys.readouterr().err.splitlines()[-1].startswith("generate: 3/3 prompts done (")


def test_generate_image_reports_progress_after_each_batch(tmp_path, capsys):
    args = ["generate-image", "--prompts", "a red circle", "a blue square", "a green triangle", "--steps", "1",
            "--batch-size", "2"]
    assert main([*args, "--out", str(tmp_path / "quiet"), "--progress-every", "inf"]) == 0
    quiet = capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "loud"), "--progress-every", "0"]) == 0
    loud = capsys.readouterr()
    assert loud.out.replace("loud", "quiet") == quiet.out == f"wrote 3 images to {tmp_path / 'quiet'}\n"
    assert "images done" not in quiet.err
    assert [TIME.sub("", line) for line in loud.err.splitlines()] == ["generate-image: 2/3 images done ",
                                                                       "generate-image: 3/3 images done "]
    assert (tmp_path / "loud" / "prompts.jsonl").read_text() == (tmp_path / "quiet" / "prompts.jsonl").read_text()
    assert (tmp_path / "loud" / "0002.png").read_bytes() == (tmp_path / "quiet" / "0002.png").read_bytes()


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_on_a_terminal_one_line_is_rewritten_in_place_and_ended_once():
    stream = Terminal()
    details = iter(["a long detail"])
    line = Progress("job", 3, "prompts", every=0, stream=stream, detail=lambda: next(details, ""))
    line.update(1)
    line.update(2)
    line.every = float("inf")
    line.update(3)
    line.close()
    line.close()
    text = stream.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1
    writes = text.rstrip("\n").split("\r")[1:]
    assert [TIME.sub("", w.rstrip()) for w in writes] == ["job: 1/3 prompts done ", "job: 2/3 prompts done ",
                                                        "job: 3/3 prompts done "]
    assert len(writes[1]) == len(writes[0]) > len(writes[1].rstrip())  # padded over the longer line before it
    quiet = Terminal()
    Progress("job", 3, every=float("inf"), stream=quiet).close()
    assert quiet.getvalue() == ""


def test_progress_intervals_are_checked_in_one_place(capsys):
    assert [check_interval(v) for v in ("inf", "2.5", 0, 3)] == [float("inf"), 2.5, 0.0, 3.0]
    for bad in ("nan", float("nan"), -1, "-0.5", "soon", True, None):
        with pytest.raises(ValueError, match=re.escape(repr(bad))):
            check_interval(bad)
    with pytest.raises(ValueError, match="got -1"):
        Progress("job", 3, every=-1)
    with pytest.raises(ValueError, match="got True"):
        GenerateImageJob(progress_every=True)
    with pytest.raises(SystemExit):
        main(["generate", "--model", "reasonrl/demo/policy", "--progress-every", "soon", "x"])
    assert "got 'soon'" in capsys.readouterr().err


def clock(monkeypatch, times):
    monkeypatch.setattr("reasonrl.progress.time", SimpleNamespace(monotonic=lambda: times[0]))


def test_eval_line_rate_leaves_out_resumed_samples_and_counts_failures(monkeypatch):
    times = [100.0]
    clock(monkeypatch, times)
    stream = io.StringIO()
    line = EvalProgress(10, 4, 2, stream=stream)  # 4 samples resumed, 2 of them correct
    line.every = 0
    times[0] = 102.0
    line.update(2, 1, 1)  # 2 more in 2 s: 1.0/s, not 3.0/s
    times[0] = 104.0
    line.close()
    assert stream.getvalue().splitlines() == ["eval: 6/10 samples done (2.0 s, 1.0/s, pass@1 0.500, 1 failed)"]
    quick, off = io.StringIO(), io.StringIO()
    q = EvalProgress(2, 0, 0, stream=quick)
    times[0] = 105.0
    q.update(2, 2, 0)
    q.close()  # a quick run still gets its last line
    assert quick.getvalue() == "eval: 2/2 samples done (1.0 s, 2.0/s, pass@1 1.000)\n"
    o = EvalProgress(2, 0, 0, enabled=False, stream=off)
    o.update(2, 2, 0)
    o.close()
    assert off.getvalue() == ""


def test_sand_stage_line_counts_calls_and_failures(monkeypatch, capsys):
    times = [0.0]
    clock(monkeypatch, times)
    line = ProgressLine("base.solve", 4, True)
    times[0] = 1.0
    line.update(2, 0)
    times[0] = 2.0
    line.update(1, 1)  # quicker than a line: none yet
    assert capsys.readouterr().err == ""
    line.close()
    assert capsys.readouterr().err == "base.solve: 3/4 calls done (2.0 s, 1.5/s, 1 failed)\n"
    off = ProgressLine("base.solve", 4, False)
    off.update(4, 0)
    off.close()
    assert capsys.readouterr().err == ""


def test_a_line_in_place_is_ended_when_generate_fails(monkeypatch):
    """The line was closed only after a successful run: on a terminal, Ctrl-C or an error glued its
    traceback to the end of the progress line."""
    import sys

    from reasonrl.engine.llm import LLM

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    llm = LLM("reasonrl/demo/policy", device="cpu")
    steps = llm.engine.step

    def interrupted():
        if llm.engine.num_generated_tokens > 3:
            raise KeyboardInterrupt
        return steps()

    monkeypatch.setattr(llm.engine, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        llm.generate(PROMPTS, progress=0)
    assert stream.getvalue().startswith("\rgenerate: 0/3 prompts done") and stream.getvalue().endswith("\n")


def test_a_config_that_is_no_object_is_no_vlm(tmp_path):
    from reasonrl.models.loader import is_vlm

    (tmp_path / "config.json").write_text("[1]")
    assert not is_vlm(tmp_path)  # (it raised AttributeError: 'list' object has no attribute 'get')


def test_the_detail_is_made_only_when_a_line_is_printed():
    """generate formatted its token count and rate after every engine step, printed or not."""
    made = []
    line = Progress("job", 100, stream=io.StringIO(), every=float("inf"), detail=lambda: made.append(1) or "x")
    for done in range(100):
        line.update(done)
    line.close()
    assert made == []
