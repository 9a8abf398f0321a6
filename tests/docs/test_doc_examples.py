"""Every shell and Python example in README.md and docs/ runs as written.

Each page's fenced ```bash and ```python blocks run in order, in one scratch directory per page
(so a block may use what an earlier one wrote), with the repository's `recipes/`, `reasonrl/` and
`docs/` linked in so that paths such as `reasonrl/demo/policy` and `recipes/letter-smoke.yaml`
resolve. A block that is too expensive for the test suite (a benchmark that trains for minutes,
a GPU command, a server that runs until stopped) is preceded by a comment saying so:

    <!-- doc-test: skip (why) -->

and no other block is exempt.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"(?P<marker><!-- doc-test: skip \((?P<why>[^\n]*?)\) -->\n)?```(?P<lang>bash|python)\n(?P<code>.*?)```",
                   re.S)
TIMEOUT = 600


def blocks(page: Path) -> list[dict]:
    return [{"lang": m["lang"], "code": m["code"], "skip": m["why"], "line": page.read_text().count("\n", 0, m.start()) + 1}
            for m in FENCE.finditer(page.read_text())]


def test_every_skip_marker_gives_a_reason_and_precedes_a_block():
    for page in PAGES:
        text = page.read_text()
        assert text.count("<!-- doc-test:") == sum(1 for b in blocks(page) if b["skip"] is not None), page.name
        assert all(b["skip"].strip() for b in blocks(page) if b["skip"] is not None), page.name


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if any(b["skip"] is None for b in blocks(p))], ids=lambda p: p.name)
def test_page_examples_run(page, tmp_path):
    for name in ("recipes", "reasonrl", "docs"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1"}
    for block in blocks(page):
        if block["skip"] is not None:
            continue
        cmd = ["bash", "-euo", "pipefail", "-c", block["code"]] if block["lang"] == "bash" else \
            [sys.executable, "-c", block["code"]]
        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT)
        assert done.returncode == 0, (f"{page.name}:{block['line']} failed ({done.returncode}):\n{block['code']}\n"
                                      f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}")
