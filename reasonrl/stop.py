"""`StopSignal`: Ctrl-C and SIGTERM ask a long job to stop at its next safe point.

    with StopSignal("the current step") as stop:
        while not done and not stop:
            step()
        save()

The first SIGINT or SIGTERM sets the flag and says what will happen; the job finishes its step,
saves and tells how to resume. A second SIGINT stops at once (KeyboardInterrupt), for a step that
would take too long. Handlers are only installed in the main thread (signals go nowhere else);
elsewhere the flag can still be set with `request()`.
"""

from __future__ import annotations

import signal
import sys
import threading


class StopSignal:
    def __init__(self, point: str = "the current step"):
        self.point = point
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def __bool__(self) -> bool:
        return self.signal_name is not None

    def __call__(self) -> bool:
        """The flag as a function, for loops that take a `stop` callable."""
        return self.signal_name is not None

    def request(self, name: str = "stop") -> None:
        self.signal_name = name

    @property
    def exit_code(self) -> int:
        """The shell's convention for a job ended by a signal: 128 + its number."""
        return 128 + {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM}.get(self.signal_name, signal.SIGINT)

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: now
        self.signal_name = name
        print(f"\nreasonrl: {name} received: stopping after {self.point} and saving "
              f"(press Ctrl-C again to stop at once, unsaved)", file=sys.stderr, flush=True)

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
