"""Strategies: `single` (one process), `ddp` (torch DistributedDataParallel) and
`deepspeed` (ZeRO stages 0-3, an optional extra)."""

from __future__ import annotations

import torch
from torch import nn

from dist_train.config import Config
from dist_train.env import DistEnv
from dist_train.resolve import Resolved
from dist_train.strategy.base import Strategy


def build_strategy(cfg: Config, env: DistEnv, resolved: Resolved, model: nn.Module,
                   optimizer: torch.optim.Optimizer) -> Strategy:
    if resolved.strategy == "deepspeed":
        from dist_train.strategy.deepspeed import DeepSpeedStrategy
        return DeepSpeedStrategy(cfg, env, resolved, model, optimizer)
    strategy: Strategy
    if resolved.strategy == "single":
        from dist_train.strategy.single import SingleStrategy
        strategy = SingleStrategy(model, optimizer)
    elif resolved.strategy == "ddp":
        from dist_train.strategy.ddp import DDPStrategy
        strategy = DDPStrategy(model, optimizer, env, cfg.strategy.bucket_cap_mb)
    else:
        raise AssertionError(resolved.strategy)
    strategy.setup_precision(cfg.train.precision, env.device)
    return strategy


__all__ = ["Strategy", "build_strategy"]
