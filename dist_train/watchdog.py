"""The stall watchdog: a job never hangs silently.

Every rank runs one thread that watches its own progress. Progress is a
training step done, an evaluation batch done or a piece of a checkpoint
written (`beat()`: one clock read on the hot path). When a rank makes no
progress for longer than the bound, or learns through the job's store that
another rank has stalled, it:

1. tells the others (a key in the job's store),
2. writes its report, RUN_DIR/hang/rank-N.txt (and .json): the stacks of
   all its threads, the collective each is inside (which one, its group and
   sequence number, the shapes), what the loop was doing, since when,
3. holds a roll call at the store, to learn which ranks stopped answering
   (a process stopped or dead, a host or a network gone),
4. waits a moment for the reports of the ranks that answered; the lowest of
   them writes RUN_DIR/hang/summary.txt and prints it: which ranks are stuck
   where (file:line, in your code or ours), which collective the others wait
   in, and which rank is missing from it (dist_train.stall_report),
5. ends its process with exit status 3 (EXIT_STALLED). The newest complete
   checkpoint is untouched (a save cut short has no manifest), and a restart
   (`--max-restarts`, SLURM's requeue) resumes from it.

The bound: `dist.hang_timeout_s`, or by default 20 x the slowest unit of
progress seen since the warm-up (a step, an evaluation batch, a checkpoint
write, and the moments between them), at least 30 s (300 s with
train.compile, whose recompiles take that long) and at most half of
`dist.timeout_s` (so the watchdog speaks before a collective gives up).
Until the first WARMUP_STEPS steps of a start are done (start-up: the nodes
meeting, the data verified, the checkpoint loaded, the first step compiled)
the bound is 90% of `dist.start_timeout_s`, and collectives wait up to
`dist.start_timeout_s`.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dist_train.config import DistConfig
from dist_train.env import DistEnv
from dist_train.errors import EXIT_STALLED

WARMUP_STEPS = 3
MULTIPLE = 20.0
FLOOR_S = 30.0
COMPILE_FLOOR_S = 300.0
STALL_KEY = "stall"
LOOK_AT_STORE_AFTER_S = 2.0  # a rank idle this long checks whether another rank has announced a stall
# A look at the store waits this long at most: a request on a connection whose
# other end went silent (a cut link, a stopped host) blocks in torch's TCPStore
# client for ever, whatever its timeout (measured), so the look runs on a thread
LOOK_WAIT_S = 7.0


#: called with the exit status just before a stall ends the process (which
#: skips Python's own shutdown): a launcher's worker records its status there
EXIT_HOOKS: list[Callable[[int], None]] = []


def on_exit(hook: Callable[[int], None]) -> None:
    EXIT_HOOKS.append(hook)


class NoWatchdog:
    """For loops run without one (tests, tools): every call does nothing."""

    step = 0
    phase = "starting"

    def beat(self) -> None:
        pass

    def warmed_up(self) -> None:
        pass

    def stop(self) -> None:
        pass


class Watchdog(NoWatchdog):
    def __init__(self, cfg: DistConfig, compiled: bool, env: DistEnv, run_dir: Path, peers: Any = None,
                 strategy: str = "single") -> None:
        self.env, self.run_dir, self.peers, self.strategy = env, Path(run_dir), peers, strategy
        self.explicit = cfg.hang_timeout_s
        self.start_bound = 0.9 * cfg.start_timeout_s
        self.training_timeout_s = cfg.timeout_s
        self.ceiling = cfg.timeout_s / 2
        self.floor = COMPILE_FLOOR_S if compiled else FLOOR_S
        self.last = time.monotonic()
        self.slowest = 0.0
        self.warm = False
        self.step = 0  # global step the loop is in (set by the trainer)
        self.phase = "starting"  # what the loop is doing: starting, training, evaluating <split>, checkpoint, ...
        self._stop = threading.Event()
        self._store_client: Any = None  # kept between looks at the store
        self._looking: threading.Thread | None = None
        self._thread = threading.Thread(target=self._watch, name="dist-train-watchdog", daemon=True)
        if self.explicit != 0:
            self._thread.start()

    # ------------------------------------------------------------ the loop's side (hot path)

    def beat(self) -> None:
        now = time.monotonic()
        gap = now - self.last
        if gap > self.slowest:
            self.slowest = gap
        self.last = now

    def warmed_up(self) -> None:
        """After the first steps of this start: collectives get the training
        timeout, and the bound is measured from here on."""
        if self.warm:
            return
        if self.peers is not None:
            self.peers.training_timeout(self.training_timeout_s)
        self.slowest, self.last, self.warm = 0.0, time.monotonic(), True

    def stop(self) -> None:
        self._stop.set()

    def bound(self) -> tuple[float, str]:
        """The bound now, and where it comes from (for the report)."""
        if not self.warm:
            return self.start_bound, "90% of dist.start_timeout_s, until the first steps are done"
        if self.explicit is not None:
            return float(self.explicit), "dist.hang_timeout_s"
        measured = MULTIPLE * self.slowest
        value = min(self.ceiling, max(self.floor, measured))
        return value, (f"dist.hang_timeout_s auto: {MULTIPLE:g} x the slowest unit of progress "
                       f"({self.slowest:.3g} s), at least {self.floor:g} s, at most dist.timeout_s / 2")

    # ------------------------------------------------------------ the watching thread

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, max(0.05, self.bound()[0] / 10))):
            idle = time.monotonic() - self.last
            bound, _ = self.bound()
            announced = None
            if self.peers is not None and idle > LOOK_AT_STORE_AFTER_S:
                announced = self._look_at_store()
            if self._stop.is_set():
                return
            if idle > bound or announced is not None:
                self.fire(idle, announced_by=announced)
                return

    def _look_at_store(self) -> str | None:
        """The rank that announced a stall in the job's store, or None: none did,
        or the store cannot be reached (then only this rank's own bound counts).
        Waits at most LOOK_WAIT_S; while an earlier look still hangs, the store
        is taken as silent without another."""
        if self._looking is not None and self._looking.is_alive():
            return None
        found: list[str | None] = []

        def look() -> None:
            try:
                self._store_client = self._store_client or self.peers._client(3.0)
                found.append(self.peers.announced(STALL_KEY, self._store_client))
            except Exception:  # the store's host, or the network to it, is gone
                self._store_client = None

        self._looking = threading.Thread(target=look, name="dist-train-watchdog-store", daemon=True)
        self._looking.start()
        self._looking.join(LOOK_WAIT_S)
        if self._looking.is_alive():  # stuck on a silent connection: no look until it ends, then a new one
            self._store_client = None
        return found[0] if found else None

    def fire(self, idle: float | None = None, announced_by: str | None = None,
             error: BaseException | None = None) -> None:
        """Report this rank, agree with the others on who is missing, print
        the summary (the lowest reporting rank) and end the process with
        EXIT_STALLED. `error`: the collectives' mismatch torch found
        (dist.check_collectives), reported instead of a stall."""
        from dist_train import stall_report

        idle = time.monotonic() - self.last if idle is None else idle
        if self.peers is not None and announced_by is None:
            self.peers.announce(STALL_KEY, str(self.env.rank), wait_s=3.0)
        bound, why = self.bound()
        report = stall_report.describe_rank(self, idle, bound, why, announced_by, error)
        if self.env.backend == "nccl":
            report["nccl_trace"] = stall_report.dump_nccl_trace(self.run_dir, self.env.rank)
        try:
            stall_report.write_report(self.run_dir, report)
        except OSError as exc:
            print(f"dist-train: rank {self.env.rank}: cannot write its stall report in {self.run_dir / 'hang'} "
                  f"({exc})", file=sys.stderr, flush=True)
        missing: list[int] | None = []
        if self.peers is not None:
            missing = self.peers.missing(name=f"stall-roll-call-{'error' if error else 'stall'}")
        reports = stall_report.wait_for_reports(self.run_dir, self.env.world_size, missing)
        print(stall_report.rank_line(report, missing, self.peers, self.run_dir), file=sys.stderr, flush=True)
        answered = sorted(set(reports) | {self.env.rank})
        if answered[0] == self.env.rank:
            summary = stall_report.summarize(reports, missing, self.peers, self.env, self.run_dir)
            ended = stall_report.end_stopped_peers(missing, self.peers, self.env)
            if ended:
                summary += f"\n  ended with SIGKILL (as torch's agent would after 30 s): {ended}"
            try:
                stall_report.write_summary(self.run_dir, summary)
            except OSError:
                pass
            print(summary, file=sys.stderr, flush=True)
        sys.stdout.flush()
        sys.stderr.flush()
        for hook in EXIT_HOOKS:
            try:
                hook(EXIT_STALLED)
            except Exception:  # noqa: BLE001 - the process is ending; nothing may stop that
                pass
        os._exit(EXIT_STALLED)
