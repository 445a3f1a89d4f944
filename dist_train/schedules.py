"""Learning-rate schedules as a pure function of progress, plus the small
state reduce-on-plateau keeps.

lr = base_lr x scale x warmup(step) x decay(epoch, step) x plateau_factor

- scale: the linear scaling rule (Goyal et al. 2017), global batch over a
  reference batch, when `schedule.scale_lr`;
- warmup: linear from 1/warmup_steps up to 1 over the first optimizer steps,
  combined with any schedule;
- decay: constant, step / multistep / exponential by epoch, or cosine over
  all optimizer steps of the run down to `min_lr`;
- plateau: halved (`factor`) when the globally reduced validation metric has
  not improved for `patience` epochs, so every rank holds the same LR.

Because it is a function of (step, epoch) and a tiny state, resuming restores
the exact LR.
"""

from __future__ import annotations

import bisect
import math
from typing import Any

import torch

from dist_train.config import ScheduleConfig
from dist_train.monitor import Monitor


class LRSchedule:
    def __init__(self, cfg: ScheduleConfig, base_lr: float, global_batch_size: int, total_steps: int) -> None:
        self.cfg = cfg
        self.base_lr = base_lr * (global_batch_size / cfg.reference_batch_size if cfg.scale_lr else 1.0)
        self.total_steps = max(total_steps, 1)
        self.plateau_factor = 1.0
        self.plateau_best: float | None = None
        self.plateau_bad_epochs = 0

    def lr(self, step: int, epoch: int) -> float:
        """The LR for optimizer step `step` (0-based, counted over the run) in `epoch`."""
        c = self.cfg
        lr = self.base_lr * self.plateau_factor
        if c.name == "step":
            lr *= c.gamma ** (epoch // c.step_size_epochs)
        elif c.name == "multistep":
            lr *= c.gamma ** bisect.bisect_right(list(c.milestones_epochs), epoch)
        elif c.name == "exponential":
            lr *= c.gamma ** epoch
        elif c.name == "cosine":
            progress = min(step / self.total_steps, 1.0)
            floor = c.min_lr * self.plateau_factor
            lr = floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        if c.warmup_steps and step < c.warmup_steps:  # a multiplier on whatever the schedule gives
            lr *= (step + 1) / c.warmup_steps
        return lr

    def apply(self, optimizer: torch.optim.Optimizer, step: int, epoch: int) -> float:
        lr = self.lr(step, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def end_of_epoch(self, metrics: dict[str, float]) -> bool:
        """Feed the epoch's globally reduced validation metrics; True when the LR
        was reduced. Identical on every rank because the metrics are."""
        if self.cfg.name != "plateau":
            return False
        value = metrics[self.cfg.monitor]
        if Monitor(self.cfg.monitor, min_delta=self.cfg.threshold).improves(value, self.plateau_best):
            self.plateau_best, self.plateau_bad_epochs = value, 0
            return False
        self.plateau_bad_epochs += 1
        if self.plateau_bad_epochs > self.cfg.patience:
            self.plateau_factor *= self.cfg.factor
            self.plateau_bad_epochs = 0
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"plateau_factor": self.plateau_factor, "plateau_best": self.plateau_best,
                "plateau_bad_epochs": self.plateau_bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plateau_factor = float(state["plateau_factor"])
        self.plateau_best = state["plateau_best"]
        self.plateau_bad_epochs = int(state["plateau_bad_epochs"])
