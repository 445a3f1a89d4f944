"""What the targets are, and all that follows from it: classification (a
class index per sample) or regression (one or more real values per sample).

A `Task` knows its targets' dtype, how many outputs a model gives, which
losses and validation metrics fit it, what it offers a model of the user's
own, and how it is told from the targets themselves. It is a `str` enum: it
is written as its name (manifests, model bundles, metrics.jsonl) and compares
equal to it, so code of users that reads `result.model.task` keeps working;
dist-train itself asks the Task instead of testing its name. Checked before
the first step: from the config for built-in sources and shards (before any
worker starts), from the data for a custom source."""

from __future__ import annotations

import enum
import math
from typing import Any

import numpy as np
import torch

from dist_train.config import Config
from dist_train.errors import ConfigError, DistTrainError


class Task(str, enum.Enum):
    CLASSIFICATION = "classification"
    REGRESSION = "regression"

    @classmethod
    def of(cls, name: Any, where: str = "task") -> "Task":
        """The task named `name` (as stored in a manifest or a model bundle)."""
        try:
            return cls(name)
        except ValueError:
            raise DistTrainError(f"{where} {name!r} is not one of: {', '.join(t.value for t in cls)}") from None

    @classmethod
    def of_targets(cls, dtype: np.dtype | torch.dtype, ndim: int) -> "Task | None":
        """Told from the targets: integers (or booleans), one per sample, are
        class indices; real numbers are values; anything else neither (None)."""
        if isinstance(dtype, torch.dtype):
            if dtype.is_floating_point:
                return cls.REGRESSION
            integer = dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
            return cls.CLASSIFICATION if integer and ndim == 1 else None
        if np.dtype(dtype).kind in "iub":
            return cls.CLASSIFICATION if ndim == 1 else cls.REGRESSION
        return cls.REGRESSION if np.dtype(dtype).kind == "f" else None

    @property
    def classifies(self) -> bool:
        return self is Task.CLASSIFICATION

    @property
    def target_dtype(self) -> torch.dtype:
        return torch.int64 if self.classifies else torch.float32

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(np.int64) if self.classifies else np.dtype(np.float32)

    @property
    def targets_are(self) -> str:
        return "class indices" if self.classifies else "real values"

    @property
    def losses(self) -> tuple[str, ...]:
        return ("cross_entropy", "binary_cross_entropy", "mse") if self.classifies else ("mse", "l1", "huber")

    @property
    def metrics(self) -> tuple[str, ...]:
        """What evaluation reports besides the loss (as val_*, test_*)."""
        return ("accuracy",) if self.classifies else ("mse", "mae", "r2")

    @property
    def score(self) -> str:
        """The metric of how well a model fits, as a fraction (1 is perfect)."""
        return "accuracy" if self.classifies else "r2"

    def num_outputs(self, num_classes: int, target_shape: tuple[int, ...]) -> int:
        """What a model outputs per sample: a score per class, or one value per target value."""
        return num_classes if self.classifies else math.prod(target_shape)

    def offered(self, input_shape: tuple[int, ...], num_outputs: int) -> dict[str, Any]:
        """What a model of the user's own may ask for by name: input_shape,
        num_outputs, and for classes num_classes."""
        found: dict[str, Any] = {"input_shape": tuple(input_shape), "num_outputs": num_outputs}
        if self.classifies:
            found["num_classes"] = num_outputs
        return found

    def __str__(self) -> str:
        return self.value


CLASSIFICATION, REGRESSION = Task.CLASSIFICATION, Task.REGRESSION


def check_task(cfg: Config, task: Task) -> None:
    """The loss and every monitored metric must fit the data's task."""
    if cfg.train.loss not in task.losses:
        raise ConfigError("train.loss", f"{cfg.train.loss!r} does not fit this data set, whose targets are "
                          f"{task.targets_are}", f"choose one of: {', '.join(task.losses)}")
    allowed = ["val_loss", *(f"val_{m}" for m in task.metrics)]
    for key, value in (("early_stopping.monitor", cfg.early_stopping.monitor),
                       ("checkpoint.monitor", cfg.checkpoint.monitor), ("schedule.monitor", cfg.schedule.monitor)):
        if value not in allowed:
            raise ConfigError(key, f"{value!r} is not measured for {task.value}", f"choose one of: {', '.join(allowed)}")
