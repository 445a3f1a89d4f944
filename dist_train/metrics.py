"""Metrics kept as sums and counts, reduced across ranks, identical everywhere.

Sums are float64 so that the reduced value does not depend on how the split
was cut across ranks beyond float64 rounding."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from dist_train.data.loader import Batch
from dist_train.distributed import all_reduce_sum
from dist_train.env import DistEnv
from dist_train.losses import PerSampleLoss


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Batch], loss_fn: PerSampleLoss, env: DistEnv) -> dict[str, float]:
    """Loss and accuracy over a whole split: this rank's share, then one
    all-reduce of [loss sum, correct, count]. The model must be the plain module
    (not a DDP wrapper: its forward would communicate)."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=env.device)
    for batch in batches:
        logits = model(batch.inputs)
        totals[0] += loss_fn(logits, batch.targets).sum(dtype=torch.float64)
        totals[1] += (logits.argmax(dim=1) == batch.targets).sum()
        totals[2] += batch.targets.shape[0]
    model.train(was_training)
    all_reduce_sum(totals, env)
    loss_sum, correct, count = totals.tolist()
    if count == 0:
        return {"loss": float("nan"), "accuracy": float("nan"), "count": 0}
    return {"loss": loss_sum / count, "accuracy": correct / count, "count": int(count)}


class RunningMean:
    """The training loss as sums and counts over two windows, since the last
    log line and since the epoch began, kept on the device so the hot loop
    never waits for a host copy."""

    INTERVAL, EPOCH = 0, 1

    def __init__(self, device: str) -> None:
        self.totals = torch.zeros(2, 2, dtype=torch.float64, device=device)  # [window, (sum, count)]

    def add(self, loss_sum: torch.Tensor, count: int) -> None:
        self.totals[:, 0] += loss_sum.detach().to(torch.float64)
        self.totals[:, 1] += count

    def reduce_and_reset(self, window: int, env: DistEnv) -> float:
        """Global mean over `window`, which then starts again; every rank must
        call it at the same step."""
        totals = all_reduce_sum(self.totals[window].clone(), env)
        self.totals[window].zero_()
        loss_sum, count = totals.tolist()
        return loss_sum / count if count else float("nan")
