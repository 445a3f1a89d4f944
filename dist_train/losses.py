"""Losses as sums over samples (`reduction="sum"`, what training needs: the
trainer divides by the global number of samples in the step, exact when ranks
or micro-batches differ in size) or per-sample vectors (`"none"`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[..., torch.Tensor]  # (logits, targets, reduction="sum"|"none") -> loss


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    return F.cross_entropy(logits, targets, reduction=reduction)  # one fused kernel in the hot loop


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    return per_sample.sum() if reduction == "sum" else per_sample


def _binary_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    # one sigmoid unit per class against one-hot targets, averaged over classes
    onehot = F.one_hot(targets, logits.shape[1]).to(logits.dtype)
    return _reduce(F.binary_cross_entropy_with_logits(logits, onehot, reduction="none").mean(dim=1), reduction)


def _mse(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    onehot = F.one_hot(targets, logits.shape[1]).to(logits.dtype)
    return _reduce((logits - onehot).pow(2).mean(dim=1), reduction)


LOSSES: dict[str, LossFn] = {
    "cross_entropy": _cross_entropy,
    "binary_cross_entropy": _binary_cross_entropy,
    "mse": _mse,
}


def build_loss(name: str) -> LossFn:
    return LOSSES[name]
