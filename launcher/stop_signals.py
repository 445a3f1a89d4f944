"""How `dist-train launch` takes SIGTERM, SIGINT (Ctrl-C) and SIGUSR1.

The first is a stop request: it is raised as torch's own SignalException, so
torch's agent passes that signal on to every worker's process group and waits
for them (they save a checkpoint at their next agreed step and exit 75). The
same TERM or USR1 again within a few seconds is the same notice delivered
twice (SLURM signals every process of a job step) and is ignored. A second
Ctrl-C, or TERM/USR1 later on, means "now": the workers are killed at once and
the launcher exits without saving.

torch's agent would register its own handlers for TERM and INT at every start
of the workers (and would die of USR1, which it does not handle): its
`--signals-to-handle` leaves it HUP and QUIT only, so these handlers stay.

Afterwards the launcher says what happened from the workers' exit statuses and
the run directory: "checkpoint saved at step N" only when every worker saved
and that checkpoint verifies."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from dist_train.errors import EXIT_RESUME

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
REPEAT_S = 5.0  # as the workers' StopRequest: a repeat this soon is the same notice
TORCH_HANDLES = "SIGHUP,SIGQUIT"


class StopNow(BaseException):
    """Asked twice: the workers were killed. A BaseException, so that no
    `except Exception` in torch's agent takes it for a failure to handle."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class LauncherSignals:
    def __init__(self, children: Any, saves: bool = True) -> None:
        self.children = children  # () -> pids of the worker processes
        self.saves = saves  # the workers save a checkpoint on a stop request (training, not predict)
        self.first: tuple[int, float] | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> "LauncherSignals":
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        from torch.distributed.elastic.multiprocessing.api import SignalException

        now = time.monotonic()
        if self.first is None:
            self.first = (signum, now)
            # instead of torch's agent's lines as it passes the signal on (launcher.elastic drops them)
            _say(stop_notice(signum, self.saves))
            raise SignalException(f"Process {os.getpid()} got signal: {signum}", sigval=signal.Signals(signum))
        if signum != signal.SIGINT and now - self.first[1] < REPEAT_S:
            return
        for pid in self.children():  # each worker leads a process group with its data loader processes
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        raise StopNow(signum)


def stop_notice(signum: int, saves: bool = True) -> str:
    """What the launcher says as it passes a stop request on to its workers."""
    name = signal.Signals(signum).name
    again = "Ctrl-C again" if signum == signal.SIGINT else f"{name} again after {REPEAT_S:g} s"
    if not saves:
        return f"dist-train launch: {name}: passed on to the workers ({again} ends them at once)"
    return (f"dist-train launch: {name}: the workers save a checkpoint at their next stop check, then exit ({again} "
            "ends them at once, without saving)")


def _say(line: str) -> None:
    """One line on stderr from a signal handler: an unbuffered write, which
    cannot collide with a print the handler interrupted."""
    try:
        os.write(sys.stderr.fileno(), (line + "\n").encode())
    except (OSError, ValueError):
        pass


def report_stop(signame: str | None, statuses: dict[int, int], expected_workers: int | None,
                run_dir: Path | None) -> int:
    """Say how the stop went and return the launcher's exit status: 75 (resume
    me) only when every worker saved and the newest checkpoint verifies.
    `run_dir` None: a script's job, whose run directory is its own business."""
    from dist_train.checkpoint import find_latest_valid

    latest = find_latest_valid(run_dir, warn=lambda message: None) if run_dir is not None else None
    asked = f"stopped by {signame}" if signame else "the workers stopped on request"
    all_saved = bool(statuses) and all(c == EXIT_RESUME for c in statuses.values()) and (
        expected_workers is None or len(statuses) == expected_workers)
    if all_saved and run_dir is None:
        # a script's job: its rank 0 (dist_train.fit) has said at which step it saved; a second line would only repeat it
        return EXIT_RESUME
    if all_saved and latest is not None:
        print(f"dist-train launch: {asked}; checkpoint saved at step {latest.global_step} ({latest.path}). Run the "
              f"same command to resume.", file=sys.stderr, flush=True)
        return EXIT_RESUME
    how = ", ".join(f"local rank {r}: exit status {c}" for r, c in sorted(statuses.items())) or "no worker reported"
    newest = (f"the newest checkpoint is step {latest.global_step} ({latest.path}); running the same command resumes "
              f"from there" if latest is not None else "there is no checkpoint yet; running the same command starts over")
    print(f"dist-train launch: {asked}, but not every worker saved a checkpoint ({how}; a worker that did not "
          f"answer within torch's 30 s shutdown wait was killed); {newest}.", file=sys.stderr, flush=True)
    signum = getattr(signal, signame, None) if signame else None
    return 128 + int(signum) if signum is not None else 1


def report_stop_now(signum: int, run_dir: Path | None) -> int:
    from dist_train.checkpoint import find_latest_valid

    latest = find_latest_valid(run_dir, warn=lambda message: None) if run_dir is not None else None
    newest = (f"the newest checkpoint is step {latest.global_step} ({latest.path})" if latest is not None
              else "there is no checkpoint yet")
    print(f"dist-train launch: {signal.Signals(signum).name} again: the workers were stopped at once without "
          f"saving; {newest}.", file=sys.stderr, flush=True)
    return 128 + signum
