"""Strategies: `single` (one process), `ddp` (torch DistributedDataParallel),
`fsdp` (torch's fully sharded data parallel, FSDP2) and `deepspeed` (ZeRO
stages 0-3, an optional extra)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from dist_train.config import Config
from dist_train.env import DistEnv
from dist_train.resolve import Resolved
from dist_train.strategy.base import StepResult, Strategy, StrategyWeights
from dist_train.strategy.precision import Precision

#: strategies that need a process group, even with one worker
NEED_A_GROUP = ("ddp", "fsdp", "deepspeed")


def build_strategy(cfg: Config, env: DistEnv, resolved: Resolved, model: nn.Module,
                   make_optimizer: Callable[[nn.Module], torch.optim.Optimizer]) -> Strategy:
    """`make_optimizer(module)`: the optimizer over a module's parameters (FSDP
    builds it after sharding them)."""
    precision = Precision(cfg.train.precision, env.device)
    strategy: Strategy
    if resolved.strategy == "deepspeed":
        from dist_train.strategy.deepspeed import DeepSpeedStrategy
        return DeepSpeedStrategy(cfg, env, resolved, model, make_optimizer(model), precision)  # (no compile: refused)
    if resolved.strategy == "fsdp":
        from dist_train.strategy.fsdp import FSDPStrategy
        strategy = FSDPStrategy(cfg, env, model, make_optimizer, precision)
    elif resolved.strategy == "ddp":
        from dist_train.strategy.ddp import DDPStrategy
        strategy = DDPStrategy(model, make_optimizer(model), precision, env, cfg.strategy.bucket_cap_mb)
    else:
        from dist_train.strategy.single import SingleStrategy
        strategy = SingleStrategy(model, make_optimizer(model), precision)
    if cfg.train.compile:
        # the module training calls, DDP's wrapper included (torch's DDPOptimizer
        # splits the graph at the gradient buckets); evaluation and checkpoints
        # keep the plain module, so state_dict keys do not change
        strategy.train_model = torch.compile(strategy.train_model)
    return strategy


__all__ = ["NEED_A_GROUP", "Precision", "StepResult", "Strategy", "StrategyWeights", "build_strategy"]
