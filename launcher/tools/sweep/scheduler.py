"""`dist-train sweep`: run the trials of a sweep, one after another or N at a
time, each as `dist-train launch --nproc-per-node W trial.yaml` in its own
process, and collect their results.

Re-running the same sweep skips trials that finished (or failed) and starts or
resumes the others: a trial that was interrupted continues from its latest
checkpoint through the run's own resume logic. SIGTERM or Ctrl-C asks every
running trial to save a checkpoint and stop (exit 75, as `dist-train run`); a
second one kills them. When the time budget ends, running trials are stopped
the same way and continue on the next `dist-train sweep`."""

from __future__ import annotations

import ctypes
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import yaml

from dist_train.atomic import write_atomic
from dist_train.errors import EXIT_RESUME, ConfigError, DistTrainError
from dist_train.preflight import check_job
from launcher.tools.sweep.results import fmt_value, write_best_config, write_results
from launcher.tools.sweep.search import build_search
from launcher.tools.sweep.spec import SweepSpec
from launcher.tools.sweep.trials import (TrialRecord, failure_line, read_outcome, read_records_of_sweep, trial_config,
                                     trial_dir, write_record, write_trial_config)

POLL_S = 0.2


@dataclass
class Active:
    record: TrialRecord
    proc: subprocess.Popen
    started: float
    log: IO[str]
    slot: int


class SweepScheduler:
    def __init__(self, spec: SweepSpec, retry_failed: bool = False, out: IO[str] = sys.stdout) -> None:
        self.spec, self.s, self.retry_failed, self.out = spec, spec.settings, retry_failed, out
        self.records = read_records_of_sweep(spec.out_dir)
        self.search = build_search(spec, self.records)
        self.active: list[Active] = []
        self.stopping = self.killing = self.out_of_time = False
        self.deadline = None if self.s.budget.max_minutes is None else time.monotonic() + 60 * self.s.budget.max_minutes
        self.gpu_slots = _gpu_slots_for(spec)

    # ------------------------------------------------------------ the plan

    def plan(self) -> Iterator[int]:
        planned = self.search.planned
        return iter(range(planned)) if planned is not None else itertools.count()

    def to_run(self) -> Iterator[int]:
        """Trial numbers still to start or resume, in order; the others are announced as skipped."""
        for index in self.plan():
            record = self.records.get(index)
            if record is not None and (record.status == "finished" or (record.status == "failed" and not self.retry_failed)):
                self.say(f"[{record.name}] {record.status} earlier: skipped")
                continue
            yield index

    def check_unchanged(self) -> None:
        """Each trial already in the sweep directory must be what the sweep file gives for it now."""
        for index, record in sorted(self.records.items()):
            if self.s.method != "tpe":
                now = None if self.s.method == "grid" and index >= len(self.search.points) else self.search.params(index, record)
                if now != record.params:
                    raise DistTrainError(
                        f"{trial_dir(self.spec.out_dir, index)} was run with {record.params}, but the sweep file now "
                        f"gives {now if now is not None else 'no such trial'} (the space, method or seed changed). "
                        f"Resume with the sweep file as it was, or choose a new out_dir")
            path = trial_dir(self.spec.out_dir, index) / "trial.yaml"
            if path.exists():
                write_trial_config(self.spec.out_dir, index, self._config(index, record.params))

    def _config(self, index: int, params: dict[str, Any]) -> Any:
        cfg = trial_config(self.spec.base, self.spec.name, self.spec.out_dir, index, params)
        check_job(cfg, self.s.workers_per_trial)
        return cfg

    # ------------------------------------------------------------ running

    def run(self) -> int:
        s = self.s
        self.check_unchanged()
        first = self.search.params(0, self.records.get(0)) if s.method != "tpe" else None
        if first is not None:
            self._config(0, first)  # a mistake every trial would make stops the sweep here, naming the key
        self.spec.out_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.spec.out_dir / "sweep.yaml", yaml.safe_dump(self.spec.raw, sort_keys=False))
        planned = "until the time budget ends" if self.search.planned is None else f"{self.search.planned} trials"
        self.say(f"[sweep] {self.spec.name}: {s.method} search over {', '.join(p.key for p in self.spec.space)}; "
                 f"{planned}, {s.parallel_trials} at a time, {s.workers_per_trial} worker(s) each; ranking by "
                 f"{s.metric} ({self.spec.mode}); in {self.spec.out_dir}")
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._loop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for a in self.active:  # only after an unexpected error: do not leave trials behind
                _signal_group(a.proc, signal.SIGKILL)
        return self._report()

    def _loop(self) -> None:
        pending = self.to_run()
        exhausted = False
        while True:
            while not (exhausted or self.stopping or self._time_is_up()) and len(self.active) < self.s.parallel_trials:
                index = next(pending, None)
                if index is None:
                    exhausted = True
                    break
                self._start(index)
            if not self.active:
                return
            time.sleep(POLL_S)
            for a in [a for a in self.active if a.proc.poll() is not None]:
                self.active.remove(a)
                self._finish(a)
            if self._time_is_up() and not self.out_of_time:
                self.out_of_time = True
                if self.active:
                    self.say(f"[sweep] time budget of {self.s.budget.max_minutes:g} min reached: asking "
                             f"{len(self.active)} running trial(s) to save a checkpoint and stop")
                    for a in self.active:
                        _signal_group(a.proc, signal.SIGTERM, leader_only=True)

    def _time_is_up(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def _start(self, index: int) -> None:
        record = self.records.get(index)
        params = self.search.params(index, record)
        if record is None:
            record = self.records[index] = TrialRecord(index, params)
        record.params, record.exit_code, record.error = params, None, None
        described = " ".join(f"{k}={fmt_value(v)}" for k, v in params.items())
        try:
            config_path = write_trial_config(self.spec.out_dir, index, self._config(index, params))
        except ConfigError as exc:  # this trial's values are not allowed: recorded, and the sweep goes on
            record.status, record.error = "failed", str(exc)
            write_record(self.spec.out_dir, record)
            self.search.observe(record)
            self.say(f"[{record.name}] failed before starting: {exc}")
            return
        resuming = record.status in ("running", "stopped")
        record.status = "running"
        write_record(self.spec.out_dir, record)
        slot = min(set(range(self.s.parallel_trials)) - {a.slot for a in self.active})
        command = [sys.executable, "-m", "launcher", "launch", "--nproc-per-node", str(self.s.workers_per_trial),
                   str(config_path)]
        log = open(trial_dir(self.spec.out_dir, index) / "trial.log", "a", buffering=1)
        log.write(f"$ {' '.join(command)}\n")
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self._trial_env(slot),
                                start_new_session=True, preexec_fn=_stop_with_parent)
        self.active.append(Active(record, proc, time.monotonic(), log, slot))
        if self.stopping:  # the stop request came while this trial was being started
            _signal_group(proc, signal.SIGTERM, leader_only=True)
        self.say(f"[{record.name}] {'resume' if resuming else 'start'}  {described}")

    def _trial_env(self, slot: int) -> dict[str, str]:
        env = dict(os.environ)
        if "OMP_NUM_THREADS" not in env:  # the trials running together share the cores
            share = (os.cpu_count() or 1) // (self.s.parallel_trials * self.s.workers_per_trial)
            env["OMP_NUM_THREADS"] = str(max(1, share))
        if self.gpu_slots is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.gpu_slots[slot]
        return env

    def _finish(self, a: Active) -> None:
        a.log.close()
        record, code = a.record, a.proc.returncode
        record.seconds += time.monotonic() - a.started
        record.exit_code = code
        outcome = read_outcome(trial_dir(self.spec.out_dir, record.index), self.s.metric, self.spec.mode)
        record.best, record.epochs = outcome["best"], outcome["epochs"]
        record.early_stopped, record.test_accuracy = outcome["early_stopped"], outcome["test_accuracy"]
        record.test = outcome["test"]
        log_path = trial_dir(self.spec.out_dir, record.index) / "trial.log"
        if code == 0:
            record.status = "finished"
            best = "-" if record.best is None else f"{record.best:.4g}"
            self.say(f"[{record.name}] finished  best {self.s.metric}={best} after {record.epochs} epochs"
                     f"{' (early stop)' if record.early_stopped else ''} in {record.seconds:.1f}s")
        elif code == EXIT_RESUME or self.stopping or self.out_of_time:
            record.status = "stopped"
            self.say(f"[{record.name}] stopped after {record.epochs} epochs; it resumes from its checkpoint "
                     f"on the next `dist-train sweep`")
        else:
            record.status, record.error = "failed", failure_line(log_path)
            self.say(f"[{record.name}] failed (exit {code}): {record.error} (log: {log_path})")
        write_record(self.spec.out_dir, record)
        if record.status in ("finished", "failed"):
            self.search.observe(record)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if not self.stopping:
            self.stopping = True
            self.say(f"[sweep] {signal.Signals(signum).name}: asking {len(self.active)} running trial(s) to save a "
                     f"checkpoint and stop; again to kill them")
            for a in self.active:
                _signal_group(a.proc, signal.SIGTERM, leader_only=True)
        elif not self.killing:
            self.killing = True
            for a in self.active:
                _signal_group(a.proc, signal.SIGKILL)

    # ------------------------------------------------------------ the end

    def _report(self) -> int:
        records = [self.records[i] for i in sorted(self.records)]
        text = write_results(self.spec, records)
        self.say("\n" + text + "\n")
        self.say(f"[sweep] results: {self.spec.out_dir / 'results.csv'}, {self.spec.out_dir / 'results.json'}")
        best = write_best_config(self.spec, records)
        if best is not None:
            self.say(f"[sweep] best config: {best}  (dist-train launch --nproc-per-node "
                     f"{self.s.workers_per_trial} {best})")
        unfinished = [r for r in records if r.status in ("running", "stopped", "pending")]
        if self._time_is_up():
            self.say(f"[sweep] the time budget of {self.s.budget.max_minutes:g} min is spent; run the same command "
                     f"again for more time")
        if self.stopping:
            self.say(f"[sweep] stopped on request; {len(unfinished)} trial(s) to continue: run the same command again")
            return EXIT_RESUME
        if unfinished:
            self.say(f"[sweep] {len(unfinished)} trial(s) stopped with a checkpoint; run the same command again "
                     f"to continue them")
        if not any(r.status == "finished" for r in records):
            self.say("[sweep] no trial finished")
            return 1
        return 0

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def dry_run(self) -> int:
        """Print the trials the sweep would run (and which are done), start nothing."""
        self.check_unchanged()
        if self.s.method == "tpe":
            self.say("[sweep] tpe chooses each trial's parameters from the results of the trials before it")
            return 0
        if self.search.planned is None:
            self.say("[sweep] no max_trials: trials go on until the time budget ends; the first 20:")
        for index in itertools.islice(self.plan(), 20 if self.search.planned is None else None):
            record = self.records.get(index)
            params = self.search.params(index, record)
            status = record.status if record else "pending"
            self.say(f"trial-{index:04d}  {status:8s}  " + " ".join(f"{k}={fmt_value(v)}" for k, v in params.items()))
            self._config(index, params)  # the config each trial would get must load
        return 0


def run_sweep(spec: SweepSpec, retry_failed: bool = False, dry_run: bool = False, out: IO[str] = sys.stdout) -> int:
    scheduler = SweepScheduler(spec, retry_failed, out)
    return scheduler.dry_run() if dry_run else scheduler.run()


# ------------------------------------------------------------------ processes

def _signal_group(proc: subprocess.Popen, sig: int, leader_only: bool = False) -> None:
    """SIGTERM goes to the launcher alone (it passes the stop request on to its
    workers and waits for their checkpoints); SIGKILL to the trial's whole
    process group, workers included."""
    try:
        if leader_only:
            proc.send_signal(sig)
        else:
            os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _stop_with_parent() -> None:
    """In the trial's process, before exec: if the sweep dies (even by SIGKILL),
    the trial gets SIGTERM, saves a checkpoint and stops (Linux only)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _load_prctl() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


def gpu_slots(visible: list[str], parallel_trials: int, workers_per_trial: int) -> list[str]:
    """CUDA_VISIBLE_DEVICES for each of the trials that run at once: disjoint
    sets of `workers_per_trial` GPUs out of `visible`."""
    need = parallel_trials * workers_per_trial
    if need > len(visible):
        raise ConfigError("parallel_trials", f"{parallel_trials} trials x {workers_per_trial} worker(s) need {need} "
                          f"GPUs, and {len(visible)} are visible",
                          f"use parallel_trials: {max(1, len(visible) // workers_per_trial)}")
    return [",".join(visible[i * workers_per_trial:(i + 1) * workers_per_trial]) for i in range(parallel_trials)]


def _gpu_slots_for(spec: SweepSpec) -> list[str] | None:
    """GPUs for each slot when trials run on CUDA; None on CPU (nothing to share out)."""
    device = spec.base.dist.device
    if device == "cpu" or spec.settings.parallel_trials == 1:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v for v in visible.split(",") if v.strip()] if visible else [str(i) for i in range(torch.cuda.device_count())]
    return gpu_slots(ids, spec.settings.parallel_trials, spec.settings.workers_per_trial)

