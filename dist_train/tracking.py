"""Where numbers go: `metrics.jsonl` in the run directory and the console, from
rank 0 only. Other ranks get a tracker that does nothing."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO


class Tracker:
    """`lines` counts the records in metrics.jsonl; a checkpoint stores it, and a
    resumed run first cuts the file back to it (`truncate_to`), so the records
    of steps after the checkpoint are written once, by the run that keeps them."""

    QUIET = frozenset({"lr"})  # per-step records: file only, never the console

    def __init__(self, run_dir: Path | None, console: TextIO | None = sys.stdout, truncate_to: int | None = None) -> None:
        self.console = console
        self.lines = 0
        self._file = None
        if run_dir is not None:
            path = run_dir / "metrics.jsonl"
            if truncate_to is not None and path.exists():
                kept = path.read_text().splitlines(keepends=True)[:truncate_to]
                path.write_text("".join(kept))
            self.lines = sum(1 for _ in open(path)) if path.exists() else 0
            self._file = open(path, "a", buffering=1)
        self.events: list[dict[str, Any]] = []

    def log(self, event: str, **values: Any) -> None:
        record = {"event": event, "time": round(time.time(), 3), **values}
        self.events.append(record)
        if self._file is not None:
            self._file.write(json.dumps(record, allow_nan=True) + "\n")
            self.lines += 1
        if self.console is not None and event not in self.QUIET:
            shown = " ".join(f"{k}={_fmt(v)}" for k, v in values.items())
            print(f"[{event}] {shown}", file=self.console, flush=True)

    def close(self) -> None:
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
