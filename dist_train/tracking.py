"""Where numbers go, from rank 0 only: `metrics.jsonl` in the run directory
(always), Weights & Biases (one run per job), and the console (a progress bar
on a terminal, plain lines otherwise). Every record goes to the file and to
W&B alike. Other ranks get a tracker that does nothing and never waits.

W&B never stops training: a failure to start or to log is reported once and
the run goes on with local logging. The API key is left to W&B itself; it is
never read into the config, printed or written by us."""

from __future__ import annotations

import json
import math
import netrc
import os
import secrets
import select
import shutil
import string
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from dist_train.config import WandbConfig
from dist_train.wandb_writer import EXIT_REPORTED, warn


def new_run_id() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def api_key_configured() -> bool:
    """Whether W&B has credentials, without reading the key itself."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc().authenticators("api.wandb.ai")
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return auth is not None


class WandbSink:
    """One W&B run for the job, resumed under the same id after a restart.

    The run lives in a process of its own (`dist_train.wandb_writer`): a row
    costs training one non-blocking write to a pipe, instead of W&B's round
    trip per `Run.log` (0.3-1 ms). Rows the pipe cannot take yet wait here and
    go with the next write, so a slow or stuck W&B never blocks a step."""

    FINISH_TIMEOUT_S = 300.0  # an online run uploads what is left at its end
    COMMAND = [sys.executable, "-m", "dist_train.wandb_writer"]

    def __init__(self, cfg: WandbConfig, run_dir: Path, config: dict[str, Any], run_id: str | None) -> None:
        self.run_id = run_id or new_run_id()
        mode = cfg.mode
        if mode == "auto":
            mode = "online" if api_key_configured() else "offline"
        self.mode = mode
        self._pending = bytearray()
        self._fd: int | None = None
        self.proc: subprocess.Popen | None = None
        init = {"mode": mode, "dir": str(run_dir), "project": cfg.project, "entity": cfg.entity, "group": cfg.group,
                "tags": list(cfg.tags), "name": cfg.name, "id": self.run_id, "config": config}
        try:
            # its own session: Ctrl-C and the launcher's signals are for the trainer,
            # which ends the run when it is done
            self.proc = subprocess.Popen(self.COMMAND, stdin=subprocess.PIPE,
                                         stdout=subprocess.DEVNULL, start_new_session=True, env=_child_env())
        except OSError as exc:
            warn(f"W&B could not start ({type(exc).__name__}: {exc}); training goes on with local logging "
                      "(metrics.jsonl)")
            return
        self._fd = self.proc.stdin.fileno()
        os.set_blocking(self._fd, False)
        self._send({"init": init})

    def log(self, record: dict[str, Any], index: int, encoded: str | None = None, console: str | None = None) -> None:
        """`index`: the record's line number in metrics.jsonl, used as the W&B step,
        so steps continue after a resume (and records replayed after a restart
        never enter the online run twice: W&B ignores steps it has seen).
        `encoded`: the record as JSON, when the caller has it already; `console`:
        its console line, for the run's Logs tab."""
        text = encoded or json.dumps(record, allow_nan=True, default=str)
        message = f'{{"log": {text}, "step": {index}'
        if console is not None:
            message += f', "console": {json.dumps(console)}'
        self._queue(message + "}")

    def _send(self, message: dict[str, Any]) -> None:
        self._queue(json.dumps(message, allow_nan=True, default=str))

    def _queue(self, line: str) -> None:
        if self._fd is not None:
            self._pending += (line + "\n").encode()
            self._write()

    def _write(self) -> None:
        try:
            while self._pending:
                written = os.write(self._fd, self._pending)
                del self._pending[:written]
        except BlockingIOError:  # the pipe is full: the rest goes with the next write
            pass
        except OSError:  # the writer is gone
            self._lost()

    def _lost(self) -> None:
        self._fd = None
        self._pending.clear()
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
        if code != EXIT_REPORTED:  # it has not said why itself
            warn(f"the W&B writer process stopped (exit status {code}); training goes on with local logging")

    def finish(self, exit_code: int = 0) -> None:
        """Send what is left and wait for the run to end (bounded: a stuck W&B is stopped)."""
        if self.proc is None:
            return
        deadline = time.monotonic() + self.FINISH_TIMEOUT_S
        self._send({"finish": exit_code})
        while self._fd is not None and self._pending:
            poll = select.poll()  # not select.select: a busy process may hold fds above 1024
            poll.register(self._fd, select.POLLOUT)
            if not poll.poll(max(0.0, deadline - time.monotonic()) * 1000):
                break
            self._write()
        self._fd = None
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            warn(f"W&B did not finish within {self.FINISH_TIMEOUT_S:.0f}s and was stopped; what it had written "
                      "is in the run's wandb/ directory (`wandb sync` sends it)")
        self.proc = None


def _child_env() -> dict[str, str]:
    """The writer imports dist_train from wherever this process did."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


class Progress:
    """A tqdm bar over the steps of each epoch (rank 0, on a terminal). Steps are
    counted here and handed to tqdm at most every `EVERY_S` seconds: a tqdm
    update per step costs a few microseconds, a percent of a small model's step."""

    EVERY_S = 0.25  # four redraws a second

    def __init__(self, stream: TextIO) -> None:
        from tqdm import tqdm

        self._tqdm, self.stream, self.bar = tqdm, stream, None
        self._uncounted, self._next = 0, 0.0
        self.epoch, self.total = 0, None  # the epoch and its steps, for the bar's ETA
        self.initial = 0  # steps of this epoch done before (a resumed epoch)

    def start_epoch(self, epoch: int, total: int, done: int = 0) -> None:
        """The bar's total (for its ETA) and where a resumed epoch starts."""
        self.epoch, self.total, self.initial = epoch, total, done

    def step(self) -> None:
        self._uncounted += 1
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.EVERY_S
        if self.bar is None:
            # a terminal that reports no size (a bare pty) would get no bar at all
            size = shutil.get_terminal_size((100, 20))
            self.bar = self._tqdm(total=self.total, initial=self.initial, file=self.stream, unit="step",
                                  desc=f"epoch {self.epoch}", ncols=size.columns, nrows=size.lines,
                                  leave=False)
            self.bar.refresh()  # show it now, even if the epoch ends before tqdm's first timed refresh
        self.bar.update(self._uncounted)
        self._uncounted = 0

    def note(self, record: dict[str, Any]) -> None:
        if self.bar is not None and "loss" in record:
            # drawn with the next update: a redraw per record costs ~0.1 ms
            self.bar.set_postfix(loss=f"{record['loss']:.4g}", lr=f"{record.get('lr', float('nan')):.3g}",
                                 refresh=False)

    def write(self, line: str) -> None:
        if self.bar is not None:  # the bar comes back with its next update
            self.bar.clear()
        print(line, file=self.stream, flush=True)

    @property
    def steps(self) -> int:
        """Steps of this epoch so far (the bar's count and those not handed over yet)."""
        return (self.bar.n - self.initial if self.bar is not None else 0) + self._uncounted

    def end_epoch(self) -> None:
        if self.bar is not None:
            self.bar.update(self._uncounted)
            self.bar.close()
            self.bar = None
        self._uncounted, self._next = 0, 0.0


class Tracker:
    """`lines` counts the records in metrics.jsonl; a checkpoint stores it, and a
    resumed run first cuts the file back to it (`truncate_to`), so the records
    of steps after the checkpoint are written once, by the run that keeps them."""

    QUIET = frozenset({"lr"})  # per-step records: file and W&B, never a console line

    def __init__(self, run_dir: Path | None, console: TextIO | None = sys.stdout, truncate_to: int | None = None,
                 sink: WandbSink | None = None, progress: bool = False) -> None:
        self.console = console
        self.sink = sink
        self.progress = Progress(sys.stderr) if progress and console is not None else None
        self.lines = 0
        self._file = None
        if run_dir is not None:
            path = run_dir / "metrics.jsonl"
            if truncate_to is not None and path.exists():
                kept = path.read_text().splitlines(keepends=True)[:truncate_to]
                path.write_text("".join(kept))
            self.lines = sum(1 for _ in open(path)) if path.exists() else 0
            self._file = open(path, "a", buffering=1)

    @property
    def run_id(self) -> str | None:
        return self.sink.run_id if self.sink is not None else None

    def log(self, event: str, **values: Any) -> None:
        record = {"event": event, "time": round(time.time(), 3), **values}
        index = self.lines
        encoded = json.dumps(record, allow_nan=True) if self._file is not None or self.sink is not None else ""
        if self._file is not None:
            self._file.write(encoded + "\n")
            self.lines += 1
        line = None
        if self.console is not None and event not in self.QUIET:
            line = f"[{event}] " + " ".join(f"{k}={_fmt(v)}" for k, v in values.items())
            if self.progress is not None:
                self.progress.note(record)
                if event in ("epoch", "stop", "test"):
                    self.progress.end_epoch()
                self.progress.write(line)
            else:
                print(line, file=self.console, flush=True)
        if self.sink is not None:
            self.sink.log(record, index, encoded=encoded, console=line)

    def step(self) -> None:
        """One optimizer step done: the progress bar moves (no record is written)."""
        if self.progress is not None:
            self.progress.step()

    def start_epoch(self, epoch: int, steps: int, done: int = 0) -> None:
        """An epoch of `steps` optimizer steps begins, `done` of them already
        taken (a resumed epoch): the progress bar's total and ETA."""
        if self.progress is not None:
            self.progress.start_epoch(epoch, steps, done)

    def close(self, exit_code: int = 0) -> None:
        if self.progress is not None:
            self.progress.end_epoch()
        if self.sink is not None:
            self.sink.finish(exit_code)
        if self._file is not None:
            self._file.close()
            self._file = None


class NullTracker(Tracker):
    def __init__(self) -> None:
        super().__init__(None, None)

    def log(self, event: str, **values: Any) -> None:
        pass


def _fmt(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.4g}" if abs(value) < 1e3 else f"{value:.0f}"
    return str(value)
