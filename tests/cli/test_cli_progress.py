"""Long `generate` and `generate-image` jobs say how far they are on stderr; stdout (results) is unchanged."""

import io
import re

from reasonrl.cli import main
from reasonrl.progress import Progress

PROMPTS = ["Add: 1 + 2", "Add: 3 + 4", "Add: 5 + 6"]
TIME = re.compile(r"\([0-9.]+ s[^)]*\)$")


def test_progress_lines_are_whole_lines_and_quick_jobs_print_none():
    stream = io.StringIO()
    quick = Progress("job", 3, "prompts", every=float("inf"), stream=stream)
    for done in range(1, 4):
        quick.update(done)
    quick.close()
    assert stream.getvalue() == ""  # (the default, 5 s: none for a job quicker than that)
    every = Progress("job", 3, "prompts", every=0, stream=stream)
    every.update(0, "12 tokens")
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
