"""Metrics kept as sums and counts, reduced across ranks, identical everywhere.

Sums are float64 so that the reduced value does not depend on how the split
was cut across ranks beyond float64 rounding."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from dist_train.comm import Comm
from dist_train.data.loader import Batch
from dist_train.losses import LossFn


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Batch], loss_fn: LossFn, comm: Comm, device: str) -> dict[str, float]:
    """Loss and accuracy over a whole split: this rank's share, then one
    all-reduce of [loss sum, correct, count]. The model must be the plain module
    (not a DDP wrapper: its forward would communicate)."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    for batch in batches:
        logits = model(batch.inputs)
        totals[0] += loss_fn(logits, batch.targets, reduction="none").sum(dtype=torch.float64)
        totals[1] += (logits.argmax(dim=1) == batch.targets).sum()
        totals[2] += batch.targets.shape[0]
    model.train(was_training)
    comm.all_reduce_sum(totals)
    loss_sum, correct, count = totals.tolist()
    if count == 0:
        return {"loss": float("nan"), "accuracy": float("nan"), "count": 0}
    return {"loss": loss_sum / count, "accuracy": correct / count, "count": int(count)}


class RunningMean:
    """The training loss over two windows: since the last log line and since the
    epoch began. The hot loop only adds on the device (no host copy, no
    collective); a reduction folds what is pending into both windows' global sums."""

    def __init__(self, device: str) -> None:
        self.pending_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.pending_count = 0
        self.device = device
        self.windows = {"interval": [0.0, 0], "epoch": [0.0, 0]}

    def add(self, loss_sum: torch.Tensor, count: int) -> None:
        self.pending_sum.add_(loss_sum.detach())
        self.pending_count += count

    def mean(self, window: str, comm: Comm) -> float:
        """Global mean over `window` ("interval" or "epoch"), which then starts
        again. A collective: every rank calls it at the same step."""
        totals = torch.stack([self.pending_sum, torch.tensor(float(self.pending_count), dtype=torch.float64,
                                                             device=self.device)])
        loss_sum, count = comm.all_reduce_sum(totals).tolist()
        self.pending_sum.zero_()
        self.pending_count = 0
        for w in self.windows.values():
            w[0] += loss_sum
            w[1] += int(count)
        total, n = self.windows[window]
        self.windows[window] = [0.0, 0]
        return total / n if n else float("nan")

    def state_dict(self) -> dict:
        return {"pending_sum": self.pending_sum.detach().cpu().clone(), "pending_count": self.pending_count,
                "windows": {k: list(v) for k, v in self.windows.items()}}

    def load_state_dict(self, state: dict, include_pending: bool = True) -> None:
        if include_pending:
            self.pending_sum.copy_(state["pending_sum"])
            self.pending_count = int(state["pending_count"])
        self.windows = {k: [float(v[0]), int(v[1])] for k, v in state["windows"].items()}
