"""Strategies: `single` (one process), `ddp` (torch DistributedDataParallel) and
`deepspeed` (ZeRO stages 0-3, an optional extra)."""

from __future__ import annotations

import torch
from torch import nn

from dist_train.config import Config
from dist_train.env import DistEnv
from dist_train.resolve import Resolved
from dist_train.strategy.base import StepResult, Strategy, StrategyWeights
from dist_train.strategy.precision import Precision

#: strategies that need a process group, even with one worker
NEED_A_GROUP = ("ddp", "deepspeed")


def build_strategy(cfg: Config, env: DistEnv, resolved: Resolved, model: nn.Module,
                   optimizer: torch.optim.Optimizer) -> Strategy:
    precision = Precision(cfg.train.precision, env.device)
    if resolved.strategy == "deepspeed":
        from dist_train.strategy.deepspeed import DeepSpeedStrategy
        return DeepSpeedStrategy(cfg, env, resolved, model, optimizer, precision)
    if resolved.strategy == "ddp":
        from dist_train.strategy.ddp import DDPStrategy
        return DDPStrategy(model, optimizer, precision, env, cfg.strategy.bucket_cap_mb)
    from dist_train.strategy.single import SingleStrategy
    return SingleStrategy(model, optimizer, precision)


__all__ = ["NEED_A_GROUP", "Precision", "StepResult", "Strategy", "StrategyWeights", "build_strategy"]
