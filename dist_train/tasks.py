"""Classification (class-index targets) and regression (real-valued targets):
which losses and which validation metrics each allows. Checked before the
first step: from the config for built-in sources and shards (before any
worker starts), from the data for a custom source."""

from __future__ import annotations

from dist_train.config import Config
from dist_train.errors import ConfigError

LOSSES = {"classification": ("cross_entropy", "binary_cross_entropy", "mse"),
          "regression": ("mse", "l1", "huber")}
#: the metrics evaluation reports besides the loss (as val_*, test_*)
METRICS = {"classification": ("accuracy",), "regression": ("mse", "mae", "r2")}


def check_task(cfg: Config, task: str) -> None:
    """The loss and every monitored metric must fit the data's task."""
    if cfg.train.loss not in LOSSES[task]:
        targets = "class indices" if task == "classification" else "real values"
        raise ConfigError("train.loss", f"{cfg.train.loss!r} does not fit this data set, whose targets are {targets}",
                          f"choose one of: {', '.join(LOSSES[task])}")
    allowed = ["val_loss", *(f"val_{m}" for m in METRICS[task])]
    for key, value in (("early_stopping.monitor", cfg.early_stopping.monitor),
                       ("checkpoint.monitor", cfg.checkpoint.monitor), ("schedule.monitor", cfg.schedule.monitor)):
        if value not in allowed:
            raise ConfigError(key, f"{value!r} is not measured for {task}", f"choose one of: {', '.join(allowed)}")
