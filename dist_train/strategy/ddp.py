"""torch's DistributedDataParallel: bucketed all-reduce overlapped with the
backward pass; `no_sync` on all micro-batches but the last."""

from __future__ import annotations

import contextlib
import inspect

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dist_train.env import DistEnv
from dist_train.strategy.base import Strategy
from dist_train.strategy.precision import Precision
from dist_train.sync_batchnorm import SyncBatchNorm


def has_synchronized_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, (SyncBatchNorm, nn.SyncBatchNorm)) for m in model.modules())


def _no_forward_buffer_sync() -> dict[str, bool]:
    # torch 2.13 renamed the switch; older releases only know broadcast_buffers
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


class DDPStrategy(Strategy):
    """Needs a process group (the job's, or a group of one that `dist_train.run` starts)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, precision: Precision, env: DistEnv,
                 bucket_cap_mb: float = 25.0) -> None:
        self.model, self.optimizer, self.precision = model, optimizer, precision
        # DDP averages gradients over ranks; the base class's world_size / global_count
        # scale leaves the gradient of the global mean
        self.world_size = env.world_size
        # the GPU the env chose (cuda:0 for a task given one GPU, whatever its local rank)
        device_ids = [torch.device(env.device)] if env.device.startswith("cuda") else None
        kwargs = {}
        if has_synchronized_batchnorm(model):
            # Synchronized batch norm keeps running statistics identical on every
            # rank by construction; DDP's broadcast of rank 0's buffers before each
            # forward would be one more collective per step for nothing.
            kwargs = _no_forward_buffer_sync()
        self.ddp = self.train_model = DistributedDataParallel(
            model, device_ids=device_ids, bucket_cap_mb=bucket_cap_mb, **kwargs,
        )
        from dist_train import collective_check

        if collective_check.CURRENT is not None:  # dist.check_collectives: each bucket checked before it is reduced
            self.ddp.register_comm_hook(None, collective_check.CURRENT.ddp_hook())

    def _accumulating(self, last: bool) -> contextlib.AbstractContextManager:
        # no_sync must cover the forward pass too: DDP decides there whether
        # the coming backward all-reduces.
        return contextlib.nullcontext() if last else self.ddp.no_sync()
