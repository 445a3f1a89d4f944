"""Metrics kept as sums and counts, reduced across ranks, identical everywhere.

Sums are float64 so that the reduced value does not depend on how the split
was cut across ranks beyond float64 rounding."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from dist_train.comm import Comm
from dist_train.data.loader import Batch
from dist_train.losses import LossFn, as_outputs


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Batch], loss_fn: LossFn, comm: Comm, device: str,
             task: str = "classification", num_outputs: int = 1) -> dict[str, float]:
    """The loss and the task's metrics over a whole split: this rank's share,
    then one all-reduce of float64 sums. Classification: accuracy. Regression:
    mean squared and absolute error over every target value, and R^2 (1 - the
    residual sum of squares over the total one, per output, averaged over
    outputs as scikit-learn's r2_score does). The model must be the plain
    module (not a DDP wrapper: its forward would communicate)."""
    was_training = model.training
    model.eval()
    sums: torch.Tensor | None = None
    for batch in batches:
        outputs = model(batch.inputs).float()
        loss = loss_fn(outputs, batch.targets, reduction="none").sum(dtype=torch.float64)
        count = torch.tensor([batch.targets.shape[0]], dtype=torch.float64, device=device)
        if task == "classification":
            part = torch.stack([loss, (outputs.argmax(dim=1) == batch.targets).sum().double(), count[0]])
        else:
            y = as_outputs(outputs, batch.targets).double().reshape(len(outputs), -1)
            error = outputs.double().reshape(len(outputs), -1) - y
            # per output: squared error, absolute error, sum of y, sum of y^2 (for the total sum of squares)
            part = torch.cat([loss.reshape(1), count, (error * error).sum(0), error.abs().sum(0), y.sum(0),
                              (y * y).sum(0)])
        sums = part if sums is None else sums + part
    model.train(was_training)
    if sums is None:  # this rank holds none of the split: zeros of the right length for the reduction
        sums = torch.zeros(3 if task == "classification" else 2 + 4 * num_outputs, dtype=torch.float64,
                           device=device)
    comm.all_reduce_sum(sums)
    return _metrics(sums.tolist(), task)


def _metrics(sums: list[float], task: str) -> dict[str, float]:
    if task == "classification":
        loss_sum, correct, count = sums
        if count == 0:
            return {"loss": float("nan"), "accuracy": float("nan"), "count": 0}
        return {"loss": loss_sum / count, "accuracy": correct / count, "count": int(count)}
    loss_sum, count = sums[0], sums[1]
    k = (len(sums) - 2) // 4
    sq, ab, s1, s2 = (sums[2 + i * k:2 + (i + 1) * k] for i in range(4))
    if count == 0:
        return {"loss": float("nan"), "mse": float("nan"), "mae": float("nan"), "r2": float("nan"), "count": 0}
    r2 = []
    for j in range(k):
        total = s2[j] - s1[j] * s1[j] / count  # the sum of squares around the split's mean
        r2.append(1.0 - sq[j] / total if total > 0 else float("nan"))
    return {"loss": loss_sum / count, "mse": sum(sq) / (count * k), "mae": sum(ab) / (count * k),
            "r2": sum(r2) / k, "count": int(count)}


class RunningMean:
    """The training loss over two windows: since the last log line and since the
    epoch began. The hot loop only adds on the device (no host copy, no
    collective); a reduction folds what is pending into both windows' global sums."""

    def __init__(self, device: str) -> None:
        self.pending_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.pending_count = 0
        self.device = device
        self.windows = {"interval": [0.0, 0], "epoch": [0.0, 0]}

    def add(self, loss_mean: torch.Tensor, count: int) -> None:
        """A micro-batch's mean loss over its `count` samples."""
        if count:
            self.pending_sum.add_(loss_mean.detach(), alpha=count)
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
