"""Decisions the loop takes between steps and epochs: early stopping, stop
requests from signals. Each is made from values every rank holds identically
(globally reduced metrics, or a flag agreed with one all-reduce), so no rank
ever stops alone."""

from __future__ import annotations

import signal
import time
from typing import Any

import torch
from torch import nn

from dist_train.config import EarlyStoppingConfig

#: exit status of a run that saved a checkpoint on a stop request: "resume me"
EXIT_RESUME = 75


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
    """Set by SIGTERM or SIGUSR1 (a scheduler's preemption notice). The handler
    only sets a flag; the loop agrees on it with the other ranks at a step
    boundary, saves and exits with EXIT_RESUME."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
    # One notice often arrives twice: SLURM signals every process of a job step,
    # and torchrun, signalled too, passes the same signal on to its workers a
    # moment later. Repeats this soon after the first are that same notice.
    REPEAT_S = 5.0

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None
        self._first_at = 0.0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            if time.monotonic() - self._first_at < self.REPEAT_S:
                return
            # asked again later: stop now, the way the signal would without us
            self.uninstall()
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
