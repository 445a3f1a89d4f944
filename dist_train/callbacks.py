"""Decisions the loop takes between steps and epochs: early stopping, stop
requests from signals. Each is made from values every rank holds identically
(globally reduced metrics, or a flag agreed with one all-reduce), so no rank
ever stops alone."""

from __future__ import annotations

import signal
import sys
import time
from typing import Any

import torch
from torch import nn

from dist_train.config import EarlyStoppingConfig

from dist_train.errors import EXIT_RESUME  # noqa: F401  (re-exported: "resume me")


def better(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


def metric_mode(monitor: str, mode: str = "auto") -> str:
    if mode != "auto":
        return mode
    return "max" if monitor.endswith("accuracy") else "min"


class EarlyStopping:
    """Stop when `monitor` has not improved by more than `min_delta` for
    `patience` epochs; optionally keep the best weights to restore at the end
    (the course's "go back to the network with the best validation performance")."""

    def __init__(self, cfg: EarlyStoppingConfig) -> None:
        self.cfg = cfg
        self.mode = metric_mode(cfg.monitor, cfg.mode)
        self.best: float | None = None
        self.best_epoch = -1
        self.bad_epochs = 0
        self.best_weights: dict[str, torch.Tensor] | None = None

    def update(self, epoch: int, metrics: dict[str, float], model: nn.Module) -> bool:
        """Record the epoch's (globally reduced) metrics; True when training should stop."""
        if not self.cfg.enabled:
            return False
        value = metrics[self.cfg.monitor]
        if better(value, self.best, self.mode, self.cfg.min_delta):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            if self.cfg.restore_best:
                self.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return False
        self.bad_epochs += 1
        return self.bad_epochs >= self.cfg.patience

    def restore(self, model: nn.Module) -> bool:
        if self.cfg.enabled and self.cfg.restore_best and self.best_weights is not None:
            model.load_state_dict(self.best_weights)
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any], best_weights: dict[str, torch.Tensor] | None) -> None:
        self.best, self.best_epoch, self.bad_epochs = state["best"], int(state["best_epoch"]), int(state["bad_epochs"])
        self.best_weights = best_weights


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
