"""The demo policy (a 0.8M-parameter chat policy trained here on `sums` traces), for tests that need a real model."""

from pathlib import Path

import reasonrl.demo

DEMO_POLICY = Path(reasonrl.demo.__file__).parent / "policy"
