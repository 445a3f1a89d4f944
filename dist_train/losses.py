"""Losses as sums over samples (`reduction="sum"`, what training needs: the
trainer divides by the global number of samples in the step, exact when ranks
or micro-batches differ in size) or per-sample vectors (`"none"`).

Class targets: cross-entropy, binary cross-entropy (a sigmoid per class
against one-hot targets) and the squared error against one-hot targets.
Real-valued targets (one or several per sample): squared error (`mse`),
absolute error (`l1`) and Huber. A sample's loss is the mean over its
outputs."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from dist_train.tasks import CLASSIFICATION, REGRESSION, Task


LossFn = Callable[..., torch.Tensor]  # (outputs, targets, reduction="sum"|"mean"|"none") -> loss


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "sum":
        return per_sample.sum()
    return per_sample.mean() if reduction == "mean" else per_sample


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    return F.cross_entropy(logits, targets, reduction=reduction)  # one fused kernel in the hot loop


def _binary_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    onehot = F.one_hot(targets, logits.shape[1]).to(logits.dtype)
    return _reduce(F.binary_cross_entropy_with_logits(logits, onehot, reduction="none").mean(dim=1), reduction)


def _onehot_mse(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    onehot = F.one_hot(targets, logits.shape[1]).to(logits.dtype)
    return _reduce((logits - onehot).pow(2).mean(dim=1), reduction)


def _per_sample(elementwise: torch.Tensor) -> torch.Tensor:
    return elementwise.reshape(len(elementwise), -1).mean(dim=1)


def as_outputs(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Real-valued targets in the outputs' shape: (N,) targets against (N, 1) outputs."""
    return targets.reshape(outputs.shape).to(outputs.dtype)


def _regression(kind: str) -> LossFn:
    def loss(outputs: torch.Tensor, targets: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        y = as_outputs(outputs, targets)
        if kind == "mse":
            elementwise = (outputs - y).pow(2)
        elif kind == "l1":
            elementwise = (outputs - y).abs()
        else:
            elementwise = F.huber_loss(outputs, y, reduction="none")
        return _reduce(_per_sample(elementwise), reduction)
    return loss


#: each task's losses by name (the names are Task.losses)
LOSSES: dict[Task, dict[str, LossFn]] = {
    CLASSIFICATION: {"cross_entropy": _cross_entropy, "binary_cross_entropy": _binary_cross_entropy,
                     "mse": _onehot_mse},
    REGRESSION: {"mse": _regression("mse"), "l1": _regression("l1"), "huber": _regression("huber")},
}


def build_loss(name: str, task: Task = CLASSIFICATION) -> LossFn:
    return LOSSES[Task(task)][name]
