"""Strategies: `single` (one process) and `ddp` (torch DistributedDataParallel)."""

from __future__ import annotations

import torch
from torch import nn

from dist_train.config import Config
from dist_train.env import DistEnv
from dist_train.resolve import Resolved
from dist_train.strategy.base import Strategy


def build_strategy(cfg: Config, env: DistEnv, resolved: Resolved, model: nn.Module,
                   optimizer: torch.optim.Optimizer) -> Strategy:
    if resolved.strategy == "single":
        from dist_train.strategy.single import SingleStrategy
        return SingleStrategy(model, optimizer)
    if resolved.strategy == "ddp":
        from dist_train.strategy.ddp import DDPStrategy
        return DDPStrategy(model, optimizer, env, cfg.strategy.bucket_cap_mb)
    raise AssertionError(resolved.strategy)


__all__ = ["Strategy", "build_strategy"]
