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
import shutil
import string
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from dist_train.config import WandbConfig


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
    """One W&B run for the job, resumed under the same id after a restart."""

    def __init__(self, cfg: WandbConfig, run_dir: Path, config: dict[str, Any], run_id: str | None,
                 warn: Any = None) -> None:
        self.warn = warn or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.run = None
        self.run_id = run_id or new_run_id()
        mode = cfg.mode
        if mode == "auto":
            mode = "online" if api_key_configured() else "offline"
        self.mode = mode
        try:
            import wandb

            self.run = wandb.init(mode=mode, dir=str(run_dir), project=cfg.project, entity=cfg.entity,
                                  group=cfg.group, tags=list(cfg.tags), name=cfg.name, id=self.run_id,
                                  resume="allow", config=config,
                                  settings=wandb.Settings(init_timeout=60, silent=True))
        except Exception as exc:  # W&B must never stop training
            self.warn(f"dist-train: warning: W&B could not start ({type(exc).__name__}: {str(exc)[:300]}); "
                      "training goes on with local logging (metrics.jsonl)")
            self.run = None

    def log(self, record: dict[str, Any], index: int) -> None:
        """`index`: the record's line number in metrics.jsonl, used as the W&B step,
        so steps continue after a resume (and records replayed after a restart
        never enter the online run twice: W&B ignores steps it has seen)."""
        if self.run is None:
            return
        try:
            self.run.log(record, step=index)
            for key, value in record.items():
                if key.startswith("best_"):
                    self.run.summary[key] = value
        except Exception as exc:
            self.warn(f"dist-train: warning: W&B stopped accepting data ({type(exc).__name__}: {str(exc)[:300]}); "
                      "training goes on with local logging")
            self.run = None

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            try:
                self.run.finish(exit_code=exit_code)
            except Exception as exc:
                self.warn(f"dist-train: warning: W&B did not finish cleanly ({type(exc).__name__})")
            self.run = None


class Progress:
    """A tqdm bar over the steps of each epoch (rank 0, on a terminal)."""

    def __init__(self, stream: TextIO) -> None:
        from tqdm import tqdm

        self._tqdm, self.stream, self.bar = tqdm, stream, None

    def step(self) -> None:
        if self.bar is None:
            # a terminal that reports no size (a bare pty) would get no bar at all
            size = shutil.get_terminal_size((100, 20))
            self.bar = self._tqdm(total=None, file=self.stream, unit="step", ncols=size.columns, nrows=size.lines,
                                  leave=False)
            self.bar.refresh()  # show it now, even if the epoch ends before tqdm's first timed refresh
        self.bar.update(1)

    def note(self, record: dict[str, Any]) -> None:
        if self.bar is not None and "loss" in record:
            self.bar.set_postfix(loss=f"{record['loss']:.4g}", lr=f"{record.get('lr', float('nan')):.3g}")

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def end_epoch(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


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
        if self._file is not None:
            self._file.write(json.dumps(record, allow_nan=True) + "\n")
            self.lines += 1
        if self.sink is not None:
            self.sink.log(record, index)
        if self.console is None:
            return
        if event in self.QUIET:
            return
        line = f"[{event}] " + " ".join(f"{k}={_fmt(v)}" for k, v in values.items())
        if self.progress is not None:
            self.progress.note(record)
            if event in ("epoch", "stop", "test"):
                self.progress.end_epoch()
            self.progress.write(line)
        else:
            print(line, file=self.console, flush=True)

    def step(self) -> None:
        """One optimizer step done: the progress bar moves (no record is written)."""
        if self.progress is not None:
            self.progress.step()

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
