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
    def __init__(self, run_dir: Path | None, console: TextIO | None = sys.stdout) -> None:
        self.console = console
        self._file = open(run_dir / "metrics.jsonl", "a", buffering=1) if run_dir is not None else None
        self.events: list[dict[str, Any]] = []

    def log(self, event: str, **values: Any) -> None:
        record = {"event": event, "time": round(time.time(), 3), **values}
        self.events.append(record)
        if self._file is not None:
            self._file.write(json.dumps(record, allow_nan=True) + "\n")
        if self.console is not None:
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
