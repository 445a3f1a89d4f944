"""Batch norm whose statistics cover the whole global batch, on every backend.

torch's `nn.SyncBatchNorm` refuses CPU tensors, so CPU/gloo training (and the
reference for the GPU path) uses this implementation: a custom autograd
function that, in training mode,

- forward: computes each rank's per-channel count, mean and M2 (sum of squared
  deviations from its own mean) with torch's fused kernel, all-gathers them
  (one small float64 tensor per layer) and combines them with the parallel
  variance of Chan et al., M2 = sum of the M2s + sum of count * (rank mean -
  global mean)^2: a sum of non-negative terms, so a mean large next to the
  spread costs no digits (E[x^2] - E[x]^2 would cancel). Every rank combines
  the same gathered bytes in the same order, so all get bit-identical global
  mean and biased variance;
- backward: all-reduces one vector per layer, [sum dy, sum dy*xhat], the two
  sums the input gradient needs.

The ranks that synchronize are all workers, or those of the `process_group`
given (whose size is then the world size). Ranks may hold different numbers of
samples, or none: every rank still calls both collectives, so nobody waits
alone. Running mean and the unbiased running variance are updated from the
global statistics and so stay identical on every rank. In evaluation mode
nothing is communicated (one rank may evaluate alone): the running statistics
are used, or, in a layer without them (track_running_stats=False), this rank's
own batch statistics, as torch's batch norm does.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from dist_train.env import DistEnv


def global_moments(x: torch.Tensor, world_size: int,
                   group: dist.ProcessGroup | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-channel mean and biased variance over all ranks' `x` (the ranks of
    `group`; None: the default group), and the global count of values per
    channel. One all-gather (a collective: every rank of the group calls it)."""
    channels = x.shape[1]
    count = x.numel() // channels if channels else 0
    if count > 0:  # torch's fused per-channel kernel (stable, one pass)
        mean, var = torch.batch_norm_update_stats(x, None, None, 0.0)
        mean, m2 = mean.double(), var.double() * count
    else:  # this rank holds no samples: it contributes nothing but still takes part
        mean = m2 = torch.zeros(channels, dtype=torch.float64, device=x.device)
    local = torch.cat([torch.tensor([float(count)], dtype=torch.float64, device=x.device), mean, m2])
    if world_size > 1:
        # into a list: all_gather_into_tensor is deprecated from torch 2.13 on, and its
        # successor all_gather_single is missing in the older releases we support
        gathered = [torch.empty_like(local) for _ in range(world_size)]
        dist.all_gather(gathered, local, group=group)
        stats = torch.stack(gathered)
    else:
        stats = local.unsqueeze(0)
    counts, means, m2s = stats[:, :1], stats[:, 1:1 + channels], stats[:, 1 + channels:]
    total = int(round(counts.sum().item()))
    if total <= 1:
        raise ValueError(f"synchronized batch norm needs more than 1 value per channel across all ranks in "
                         f"training, got {total}; use a larger global batch or data.drop_last=true")
    g_mean = (counts * means).sum(0) / total
    g_m2 = m2s.sum(0) + (counts * (means - g_mean) ** 2).sum(0)
    return g_mean, g_m2 / total, total


class _SyncBatchNormFunction(torch.autograd.Function):
    """y = (x - mean) * invstd * weight + bias with mean/invstd the global
    statistics; the gradient through them is carried by the reduced sums."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                mean: torch.Tensor, var: torch.Tensor, eps: float, total: int, world_size: int,
                group: dist.ProcessGroup | None) -> torch.Tensor:
        invstd = torch.rsqrt(var + eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps, ctx.total, ctx.world_size, ctx.group = eps, total, world_size, group
        # the affine normalization with given statistics is one fused kernel
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple:
        x, weight, mean, invstd = ctx.saved_tensors
        channels = x.shape[1]
        if x.numel() > 0:  # sum(dy * xhat) and sum(dy) per channel, one fused pass
            _, sum_dy_xhat, sum_dy = torch.ops.aten.native_batch_norm_backward(
                dy, x, weight, None, None, mean, invstd, True, ctx.eps, [False, True, True])
        else:
            sum_dy_xhat = sum_dy = torch.zeros(channels, dtype=x.dtype, device=x.device)
        # parameter gradients are this rank's part; DDP reduces them like any other
        grad_weight = sum_dy_xhat if weight is not None and ctx.needs_input_grad[1] else None
        grad_bias = sum_dy if ctx.needs_input_grad[2] else None
        sums = torch.cat([sum_dy, sum_dy_xhat]).double()
        if ctx.world_size > 1:  # every rank joins, whatever it holds
            dist.all_reduce(sums, group=ctx.group)
        grad_x = None
        if ctx.needs_input_grad[0]:
            # dx = k*(dy - mean(dy) - xhat*mean(dy*xhat)), k = invstd*weight, is the
            # per-channel affine k*dy + p*x + q. F.batch_norm with mean 0, var 1 and
            # eps 0 is a fused per-channel affine (much faster on CPU than
            # broadcasting elementwise ops over channels).
            mean_dy, mean_dy_xhat = (sums / ctx.total).to(x.dtype).split(channels)
            k = invstd if weight is None else invstd * weight
            p = -k * invstd * mean_dy_xhat
            q = -k * mean_dy - p * mean
            zeros, ones = torch.zeros_like(mean), torch.ones_like(mean)
            grad_x = F.batch_norm(dy, zeros, ones, k, q, False, 0.0, 0.0)
            grad_x.add_(F.batch_norm(x, zeros, ones, p, None, False, 0.0, 0.0))
        return grad_x, grad_weight, grad_bias, None, None, None, None, None, None


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Drop-in for BatchNorm1d/2d/3d (same parameters and buffers, so state dicts
    load into plain batch norm) whose training statistics span all ranks.

    world_size: how many ranks of the default group synchronize (None or 1: this
    rank alone, ordinary batch norm). process_group: synchronize within this
    group instead (each rank passes the group it belongs to); its size is the
    world size, so leave world_size out or give the same number."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, world_size: int | None = None, device: Any = None,
                 dtype: Any = None, *, bias: bool = True, process_group: dist.ProcessGroup | None = None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        if affine and not bias:  # torch's own batch norm learnt bias= only lately; we support torch >= 2.2
            self.register_parameter("bias", None)
        self.process_group = process_group
        self.world_size = _group_size(world_size, process_group)

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (batch, channels, ...), got {x.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not self.training:
            # torch's rule: the running statistics, or the batch's own where the layer
            # keeps none. Either way this rank's alone: a rank may evaluate by itself.
            no_running_stats = self.running_mean is None and self.running_var is None
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                no_running_stats, 0.0, self.eps)
        mean, var, total = global_moments(x.detach(), self.world_size, self.process_group)
        if self.track_running_stats and self.running_mean is not None:
            self._update_running_stats(mean, var, total)
        return _SyncBatchNormFunction.apply(x, self.weight, self.bias, mean.to(x.dtype), var.to(x.dtype),
                                            self.eps, total, self.world_size, self.process_group)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, total: int) -> None:
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * (total / (total - 1))
        self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)


def _group_size(world_size: int | None, process_group: dist.ProcessGroup | None) -> int:
    if process_group is None:
        return 1 if world_size is None else world_size
    size = dist.get_world_size(process_group)
    if size < 1:  # torch's answer for a rank outside the group
        raise ValueError(f"rank {dist.get_rank()} is not a member of the process_group given to synchronized "
                         "batch norm; every rank calls dist.new_group for every group, then passes the one it "
                         "belongs to")
    if world_size is not None and world_size != size:
        raise ValueError(f"world_size={world_size} disagrees with the process_group given, which has {size} "
                         "ranks; leave world_size out, the group's size is used")
    return size


def batch_norm_layers(model: nn.Module) -> int:
    """How many batch-norm layers `convert_sync_batchnorm` synchronizes."""
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def convert_sync_batchnorm(model: nn.Module, env: DistEnv,
                           process_group: dist.ProcessGroup | None = None) -> nn.Module:
    """Replace every batch-norm layer by its synchronized version, in place
    (returns the converted root). The new layers hold the original parameter and
    buffer objects, so dtype, device, requires_grad, state-dict keys and an
    optimizer built beforehand all carry over. process_group: synchronize within
    this group (each rank passes the one it belongs to); None: all workers.
    One worker: nothing to synchronize, unchanged. On CUDA, torch's own
    `nn.SyncBatchNorm` (NCCL kernels); elsewhere ours."""
    if env.world_size <= 1:
        return model
    if env.device.startswith("cuda"):
        return nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group)
    return _convert(model, env.world_size if process_group is None else None, process_group)


def _convert(module: nn.Module, world_size: int | None, process_group: dist.ProcessGroup | None) -> nn.Module:
    converted = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNorm):
        converted = _synchronized(module, world_size, process_group)
    for name, child in module.named_children():
        converted.add_module(name, _convert(child, world_size, process_group))
    return converted


def _synchronized(bn: nn.modules.batchnorm._BatchNorm, world_size: int | None,
                  process_group: dist.ProcessGroup | None) -> SyncBatchNorm:
    # built on "meta": every tensor it would allocate is replaced by the layer's own
    sync = SyncBatchNorm(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                         world_size=world_size, device="meta", process_group=process_group)
    # the same objects, as torch's converter does: an optimizer built on the plain
    # layer trains the synchronized one; None stays None (bias=False, affine=False,
    # track_running_stats=False)
    for name, param in bn._parameters.items():
        sync.register_parameter(name, param)
    for name, buf in bn._buffers.items():
        sync.register_buffer(name, buf, persistent=name not in bn._non_persistent_buffers_set)
    sync.training = bn.training
    # hooks registered on the layer keep firing (the same dicts, so their handles
    # still remove them), and attributes set on it (qconfig, a user's flag) remain
    sync.__dict__.update({name: value for name, value in vars(bn).items()
                          if "hook" in name or name not in vars(sync)})
    return sync
