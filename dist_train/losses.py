"""Losses as per-sample vectors, so the trainer can weight a step by the global
number of samples in it (exact when ranks or micro-batches differ in size)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

PerSampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, targets, reduction="none")


def _binary_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # one sigmoid unit per class against one-hot targets, averaged over classes
    onehot = F.one_hot(targets, logits.shape[1]).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, onehot, reduction="none").mean(dim=1)


def _mse(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    onehot = F.one_hot(targets, logits.shape[1]).to(logits.dtype)
    return (logits - onehot).pow(2).mean(dim=1)


LOSSES: dict[str, PerSampleLoss] = {
    "cross_entropy": _cross_entropy,
    "binary_cross_entropy": _binary_cross_entropy,
    "mse": _mse,
}


def build_loss(name: str) -> PerSampleLoss:
    return LOSSES[name]
