"""Early stopping, decided from the globally reduced validation metrics that
every rank holds identically, so all ranks stop at the same epoch."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dist_train.config import EarlyStoppingConfig
from dist_train.monitor import Monitor


class EarlyStopping:
    """Stop when `monitor` has not improved by more than `min_delta` for
    `patience` epochs; optionally keep the best weights to restore at the end
    (the course's "go back to the network with the best validation performance")."""

    def __init__(self, cfg: EarlyStoppingConfig) -> None:
        self.cfg = cfg
        self.monitor = Monitor(cfg.monitor, cfg.mode, cfg.min_delta)
        self.best: float | None = None
        self.best_epoch = -1
        self.bad_epochs = 0
        self.best_weights: dict[str, torch.Tensor] | None = None

    def update(self, epoch: int, metrics: dict[str, float], model: nn.Module) -> bool:
        """Record the epoch's (globally reduced) metrics; True when training should stop."""
        if not self.cfg.enabled:
            return False
        value = metrics[self.cfg.monitor]
        if self.monitor.improves(value, self.best):
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

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.bad_epochs = state["best"], int(state["best_epoch"]), int(state["bad_epochs"])


class BestWeights:
    """The weights early stopping keeps, as a checkpoint part of their own
    (best_model.pt, a plain state_dict; no file while there are none)."""

    def __init__(self, early_stopping: EarlyStopping) -> None:
        self.early_stopping = early_stopping

    def state_dict(self) -> dict[str, torch.Tensor] | None:  # type: ignore[override]
        return self.early_stopping.best_weights

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.early_stopping.best_weights = state
