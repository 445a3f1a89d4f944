"""Stop requests from signals: SIGTERM, SIGUSR1 and Ctrl-C set a flag the
loop agrees on with the other ranks at a step boundary (one small
all-reduce), so no rank ever stops alone."""

from __future__ import annotations

import signal
import sys
import time
from typing import Any


class StopRequest:
    """Set by SIGTERM, SIGUSR1 (a scheduler's preemption notice) or SIGINT
    (Ctrl-C). The handler only sets a flag; the loop agrees on it with the
    other ranks at a step boundary, saves and exits with EXIT_RESUME. Asked
    again (a second Ctrl-C at any time, or TERM/USR1 after REPEAT_S), the
    process ends at once by that signal, without a traceback."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
    # One notice often arrives twice: SLURM signals every process of a job
    # step, and torchrun, signalled too, passes the same signal on to its
    # workers a moment later. Repeats this soon after the first are that same
    # notice. A person pressing Ctrl-C twice means it, so SIGINT never repeats.
    REPEAT_S = 5.0

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None
        self._first_at = 0.0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            if signum != signal.SIGINT and time.monotonic() - self._first_at < self.REPEAT_S:
                return
            # asked again: stop now, the way the signal would without us (no traceback)
            name = signal.Signals(signum).name
            print(f"dist-train: {name} again: stopping at once without saving; the newest checkpoint is kept",
                  file=sys.stderr, flush=True)
            self.uninstall()
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        self.requested = True
        self._first_at = time.monotonic()
        self.signal_name = signal.Signals(signum).name

    def install(self) -> "StopRequest":
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def ignore_stop_signals(*_: Any) -> None:
    """For data loader processes (a DataLoader's `worker_init_fn`): a stop
    request is their rank's to honour. torch's agent signals each worker's whole
    process group, and a terminal signals the foreground group, so without this
    the readers die first (torch's loader workers die on any SIGTERM not sent by
    their parent) and take the rank down before it can save. They still end
    when their rank does: the loader shuts them down, and they watch their parent."""
    for sig in StopRequest.SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
