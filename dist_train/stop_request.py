"""Stop requests from signals: SIGTERM, SIGUSR1 and Ctrl-C set a flag the
loop agrees on with the other ranks at a step boundary (one small
all-reduce), so no rank ever stops alone."""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Iterator
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
        self.settled = False  # the stop was honoured: the checkpoint is saved, the process is ending
        self.signal_name: str | None = None
        self._first_at = 0.0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.settled:
            return
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

    def settle(self) -> None:
        """The stop was honoured (every rank saved): until the process ends, a
        stop signal changes nothing. Without this a worker still closing down
        would die of the SIGTERM torch's agent sends it when another worker
        exits first (status 75 looks like a failure to the agent), and the
        launcher would see a failed worker instead of a saved one. TERM and
        USR1 are ignored by the kernel's rule rather than by our handler: Python
        puts its default handlers back while the interpreter shuts down, and
        the agent's signal may come then."""
        self.settled = True
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            if sig in self._previous:
                signal.signal(sig, signal.SIG_IGN)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


@contextlib.contextmanager
def stop_signals_held() -> Iterator[None]:
    """Around the start of data loader processes: the stop signals wait (are
    blocked in this thread) until the readers are forked and ignore them. A
    reader forked as a signal arrives would otherwise die of it before its
    `worker_init_fn` runs, and take its rank down. A signal that came meanwhile
    is delivered when this ends."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, StopRequest.SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ignore_stop_signals(*_: Any) -> None:
    """For data loader processes (a DataLoader's `worker_init_fn`): a stop
    request is their rank's to honour. torch's agent signals each worker's whole
    process group, and a terminal signals the foreground group, so without this
    the readers die first (torch's loader workers die on any SIGTERM not sent by
    their parent) and take the rank down before it can save. They still end
    when their rank does: the loader shuts them down, and they watch their parent."""
    for sig in StopRequest.SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    # forked with them held (stop_signals_held): ignored now, any pending one is dropped
    signal.pthread_sigmask(signal.SIG_UNBLOCK, StopRequest.SIGNALS)
