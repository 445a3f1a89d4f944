"""`run()`: everything `dist-train run` does inside one worker, in order.

Validate against the job's shape, start the process group, then:
1. rank 0 takes the run directory's lock and plans the start (fresh, or which
   checkpoint, and what the config changes): read-only;
2. every rank builds its parts (data, model, strategy) and loads the
   checkpoint into them;
3. only then rank 0 changes the run directory (moves an earlier run aside for
   --fresh, writes config.yaml, cuts metrics.jsonl back, starts W&B);
4. train, tear down.
Every check that can fail runs before step 3, so a rejected command leaves
the run directory as it was. Rank 0's steps go through `rank0_then_share`:
when one fails, every rank stops at once with its message. Returns the exit
status."""

from __future__ import annotations

import faulthandler
import gc
from collections.abc import Callable
from dataclasses import dataclass
import os
import re
import sys
from pathlib import Path

import torch

from dist_train.stop_request import StopRequest
from dist_train.strategy import NEED_A_GROUP
from dist_train.collective_check import MARK
from dist_train.comm import Comm
from dist_train.config import Config, relevant_dict
from dist_train.distributed import process_group
from dist_train.env import DistEnv
from dist_train.errors import EXIT_FAILED, EXIT_OK, EXIT_RESUME, TrainingFailed
from dist_train.parts import build_parts
from dist_train.preflight import check_job
from dist_train.job_decision import JobDecision
from dist_train.resolve import Resolved, resolve
from dist_train.run_lock import RunDirLock
from dist_train.stall_report import archive as archive_reports
from dist_train.start import StartPlan, open_run_dir, plan_start
from dist_train.tracking import NullTracker, Tracker, WandbSink
from dist_train.trainer import FitResult, Parts, Trainer
from dist_train.watchdog import Watchdog

#: how a run gets its parts: `build_parts`, or a test's wrapper around it
BuildParts = Callable[[Config, DistEnv, Resolved, Comm], Parts]


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    result: FitResult | None = None  # None: the run had finished before; nothing was done
    stop: StopRequest | None = None  # after a stop: its handler still ignores signals until uninstalled


def run(cfg: Config, env: DistEnv, build: BuildParts = build_parts, take_lock: bool = True,
        announce_stop: bool = True, decided: JobDecision | None = None) -> int:
    """The job's exit status (see `run_job`)."""
    return run_job(cfg, env, build, take_lock, announce_stop, decided).exit_code


def run_job(cfg: Config, env: DistEnv, build: BuildParts = build_parts, take_lock: bool = True,
            announce_stop: bool = True, decided: JobDecision | None = None, script: bool = False) -> Outcome:
    """`build`: how the parts are made (tests and the Python API wrap
    `build_parts`). `take_lock`: False when the launcher that started this
    worker holds the run directory's lock for the job. `announce_stop`: False
    when the launcher reports a stop itself. `decided`: what the launcher
    already checked and planned (dist_train.job_decision), not done again.
    `script`: a script's run (dist_train.fit): its hints speak of its config,
    not of command-line flags."""
    if decided is not None and decided.checked_world_size == env.world_size:
        resolved = resolve(cfg, env.world_size)
    else:
        resolved = check_job(cfg, env.world_size)  # config, data and model mistakes, before any process group starts
    if env.device == "cpu" and env.world_size > 1 and "OMP_NUM_THREADS" not in os.environ:
        # several CPU workers on one machine must not each spawn one thread per core
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(env.local_world_size, 1)))
    stop = StopRequest()
    outcome = None
    try:
        with process_group(env, cfg.dist.start_timeout_s, group_of_one=resolved.strategy in NEED_A_GROUP,
                           check_collectives=cfg.dist.check_collectives) as peers:
            # only now: until the loop runs, a signal must end the process as usual
            stop.install()
            _show_stacks_on_fatal_signals()
            watchdog = Watchdog(cfg.dist, cfg.train.compile, env, Path(cfg.run.dir), peers, resolved.strategy)
            try:
                planned = decided.plan if decided is not None else None
                outcome = _run(cfg, env, resolved, stop, build, take_lock, announce_stop, watchdog, planned, script)
                return outcome
            except RuntimeError as exc:
                if MARK in str(exc):  # dist.check_collectives found ranks calling different collectives
                    watchdog.fire(error=exc)  # reports every rank's call site; ends the process
                if _is_lost_peer(exc):
                    who = f": {peers.roll_call()}" if peers is not None else ""
                    # gloo's first line, without its source-file prefix
                    cause = re.sub(r"^\[[^\]]*\]\s*", "", str(exc).splitlines()[0] if str(exc) else "")[:200]
                    raise TrainingFailed(
                        f"lost contact with another worker{who} ({cause}). A peer process died or the network "
                        f"failed (a collective waits at most dist.timeout_s={cfg.dist.timeout_s:g}s, then the job "
                        f"stops instead of hanging); run it again (or launch with --max-restarts) to resume from the "
                        f"last checkpoint in {cfg.run.dir}") from exc
                raise
            finally:
                watchdog.stop()
    finally:
        if outcome is not None and outcome.exit_code == EXIT_RESUME:
            stop.settle()  # saved: whatever signal comes now, this process ends with "resume me"
        else:
            stop.uninstall()


def _run(cfg: Config, env: DistEnv, resolved: Resolved, stop: StopRequest, build: BuildParts, take_lock: bool,
         announce_stop: bool, watchdog: Watchdog, planned: StartPlan | None, script: bool = False) -> Outcome:
    comm = Comm.of(env)
    run_dir = Path(cfg.run.dir)
    lock = RunDirLock(run_dir, "dist-train run") if take_lock and env.is_rank0 else None
    committed = False
    try:
        # the launcher's plan, made under the lock it holds, or rank 0's own
        plan: StartPlan = planned if planned is not None else comm.rank0_then_share(lambda: _plan(cfg, resolved, lock))
        if plan.finished:
            if env.is_rank0:
                print(plan.finished_line(run_dir, script), flush=True)
            return Outcome(EXIT_OK)
        trainer = Trainer(cfg, env, resolved, build(cfg, env, resolved, comm), comm, run_dir=run_dir, stop=stop,
                          watchdog=watchdog)
        if plan.checkpoint is not None:
            trainer.restore(plan.checkpoint)
        tracker: Tracker = NullTracker()

        def commit() -> None:
            nonlocal tracker
            open_run_dir(cfg)
            archive_reports(run_dir)  # an earlier stall's reports, moved aside: hang/ holds this start's only
            tracker = _rank0_tracker(cfg, run_dir, plan)

        comm.rank0_then_share(commit)
        committed = True
        trainer.attach_tracker(tracker)
        if plan.checkpoint is not None:
            if env.is_rank0:
                print(plan.resume_line(), flush=True)
            trainer.log_resume(plan.checkpoint, plan.changes.record())
        exit_code = EXIT_FAILED
        try:
            result = trainer.fit()
            exit_code = EXIT_RESUME if result.stopped else EXIT_OK
        finally:
            watchdog.stop()  # what follows (W&B finishing, teardown) is not training's progress
            tracker.close(exit_code)
        # Free DDP's reducer (it sits in reference cycles) while the process group
        # still exists, and let every rank finish before anyone tears down: a
        # gloo peer that vanishes mid-teardown aborts the others.
        del trainer
        gc.collect()
        comm.barrier()
    finally:
        if lock is not None:
            lock.release() if committed else lock.release_and_tidy()
    if result.stopped:
        if env.is_rank0 and announce_stop:
            print(f"dist-train: stopped on request ({result.stopped_by}); checkpoint saved at step {result.steps}. Run "
                  f"the same command again to resume (exit status {EXIT_RESUME}).", file=sys.stderr, flush=True)
        return Outcome(EXIT_RESUME, result, stop)
    return Outcome(EXIT_OK, result)


def _plan(cfg: Config, resolved, lock: RunDirLock | None) -> StartPlan:
    """Rank 0: the lock, then where to start (read-only); the lock is let go
    again when the plan fails."""
    if lock is not None:
        lock.acquire()
    try:
        return plan_start(cfg, resolved)
    except BaseException:
        if lock is not None:
            lock.release_and_tidy()
        raise


def _rank0_tracker(cfg: Config, run_dir: Path, plan: StartPlan) -> Tracker:
    sink = None
    if cfg.wandb.mode != "disabled":
        sink = WandbSink(cfg.wandb, run_dir, relevant_dict(cfg), plan.wandb_run_id)
        where = (f"offline, stored in {run_dir / 'wandb'} (upload it later with `wandb sync {run_dir / 'wandb'}/offline-run-*`)"
                 if sink.mode == "offline" else f"online, project {cfg.wandb.project}")
        print(f"dist-train: W&B run {sink.run_id} {where}", flush=True)
    progress = cfg.run.progress and sys.stderr.isatty()
    return Tracker(run_dir, truncate_to=plan.metrics_lines, sink=sink, progress=progress)


def _show_stacks_on_fatal_signals() -> None:
    """A rank killed by a fatal signal (gloo's abort on mismatched collectives,
    a segfault) prints the Python stacks of all its threads first, to the
    process's own stderr (whatever a caller has put in sys.stderr's place)."""
    try:
        faulthandler.enable(file=sys.__stderr__ or sys.stderr, all_threads=True)
    except (AttributeError, OSError, ValueError):  # no real stderr to write to: nothing to show it on
        pass


def _is_lost_peer(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(word in text for word in ("connection closed by peer", "connection reset", "timed out", "timeout",
                                         "broken pipe", "gloo", "nccl", "socket"))

