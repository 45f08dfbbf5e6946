"""When a run stops starting new work: on SIGTERM / SIGINT, or at JANITOR_DEADLINE_SECONDS
(README "Time limits").

Kubernetes sends SIGTERM when it deletes the Job, drains the node or reaches the Job's
``activeDeadlineSeconds``, then SIGKILL after the pod's grace period (30 s by default). The
run must not die mid-line: from the signal (or the deadline) on it starts nothing new, lets
the work in flight settle, reports everything not started as ``skipped`` and ends with
``run.finished``. The chart sets the deadline below ``activeDeadlineSeconds``, so a run
normally ends by its own deadline, with a summary, before Kubernetes steps in.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

TERMINATED = "terminated"
DEADLINE_REACHED = "deadline reached"


class Stop:
    """A flag the executor reads before starting each unit of work; thread-safe.

    ``clock`` is monotonic seconds (injected for tests).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._reason: str | None = None
        self._deadline: float | None = None
        self._clock = clock
        self._lock = threading.Lock()

    def set_deadline(self, seconds: float) -> None:
        """No new work starts once ``seconds`` from now have passed (0 or less: none)."""
        if seconds > 0:
            with self._lock:
                self._deadline = self._clock() + seconds

    def request(self, reason: str) -> None:
        """From now on no new work starts; the first reason given is kept."""
        with self._lock:
            if self._reason is None:
                self._reason = reason

    def reason(self) -> str | None:
        """Why new work must not start, or None while it may."""
        with self._lock:
            deadline = self._deadline
            if self._reason is None and deadline is not None and self._clock() >= deadline:
                self._reason = DEADLINE_REACHED
            return self._reason

    @contextmanager
    def on_signals(self, *signals: signal.Signals) -> Iterator[None]:
        """Within the block, ``signals`` request a stop instead of ending the process.

        Python runs signal handlers on the main thread only, so elsewhere (a run started
        from a worker thread, as in an embedding program) the block changes nothing.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handle(signum: int, _: FrameType | None) -> None:
            self.request(TERMINATED)

        previous = {s: signal.signal(s, handle) for s in signals}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
