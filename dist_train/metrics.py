"""Metrics kept as sums and counts, reduced across ranks, identical everywhere.

Sums are float64 so that the reduced value does not depend on how the split
was cut across ranks beyond float64 rounding."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from dist_train.comm import Comm
from dist_train.data.loader import Batch
from dist_train.losses import LossFn, as_outputs
from dist_train.tasks import CLASSIFICATION, Task


@dataclass(frozen=True)
class Detail:
    """What `evaluate` adds to the loss and accuracy of a classifier:
    top-k accuracy, log loss, the confusion matrix and, from it, precision,
    recall and F1 per class and their macro means (`dist-train evaluate`)."""

    num_classes: int
    top_k: int = 5
    loss: str = "cross_entropy"  # how outputs become probabilities (see dist_train.predictor)
    class_names: tuple[str, ...] | None = None


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Batch], loss_fn: LossFn, comm: Comm, device: str,
             task: Task = CLASSIFICATION, num_outputs: int = 1, detail: Detail | None = None) -> dict[str, Any]:
    """The loss and the task's metrics over a whole split: this rank's share,
    then one all-reduce of float64 sums. Classification: accuracy (and, with
    `detail`, more). Regression: mean squared and absolute error over every
    target value, and R^2 (1 - the residual sum of squares over the total one,
    per output, averaged over outputs as scikit-learn's r2_score does: the one
    definition of R^2 in dist-train). The model must be the plain module (not
    a DDP wrapper: its forward would communicate)."""
    task = Task(task)
    return reduce_sums(local_sums(model, batches, loss_fn, device, task, num_outputs, detail), comm, task, detail)


def local_sums(model: nn.Module, batches: Iterable[Batch], loss_fn: LossFn, device: str, task: Task = CLASSIFICATION,
               num_outputs: int = 1, detail: Detail | None = None) -> torch.Tensor:
    """This rank's float64 sums over its share of a split (no communication)."""
    task = Task(task)
    was_training = model.training
    model.eval()
    sums: torch.Tensor | None = None
    for batch in batches:
        outputs = model(batch.inputs).float()
        targets = batch.targets.to(outputs.device)
        loss = loss_fn(outputs, targets, reduction="none").sum(dtype=torch.float64)
        part = _part(outputs, targets, loss, task, detail)
        sums = part if sums is None else sums + part
    model.train(was_training)
    if sums is None:  # this rank holds none of the split: zeros of the right length for the reduction
        sums = torch.zeros(_size(task, num_outputs, detail), dtype=torch.float64, device=device)
    return sums


def reduce_sums(sums: torch.Tensor, comm: Comm, task: Task = CLASSIFICATION,
                detail: Detail | None = None) -> dict[str, Any]:
    """Collective: every rank's sums added up, and the metrics from them."""
    task = Task(task)
    comm.all_reduce_sum(sums)
    values = sums.tolist()
    found: dict[str, Any] = _metrics(values[:3] if task.classifies else values, task)
    if detail is not None and task.classifies:
        found["error"] = 1.0 - found["accuracy"]  # top-1
        found.update(_detailed(values[3:], found["count"], detail))
    return found


def _size(task: Task, num_outputs: int, detail: Detail | None) -> int:
    if not task.classifies:
        return 2 + 4 * num_outputs
    return 3 + (2 + detail.num_classes ** 2 if detail is not None else 0)


def _part(outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor, task: Task,
          detail: Detail | None) -> torch.Tensor:
    """One batch's sums (float64)."""
    count = torch.tensor([targets.shape[0]], dtype=torch.float64, device=outputs.device)
    if task.classifies:
        predicted = outputs.argmax(dim=1)
        part = torch.stack([loss, (predicted == targets).sum().double(), count[0]])
        if detail is None:
            return part
        c = detail.num_classes
        k = min(detail.top_k, c)
        top_k = (outputs.topk(k, dim=1).indices == targets[:, None]).any(dim=1).sum().double()
        confusion = torch.bincount(targets * c + predicted, minlength=c * c).double()
        return torch.cat([part, torch.stack([_log_loss(outputs, targets, detail.loss), top_k]), confusion])
    y = as_outputs(outputs, targets).double().reshape(len(outputs), -1)
    error = outputs.double().reshape(len(outputs), -1) - y
    # per output: squared error, absolute error, sum of y, sum of y^2 (for the total sum of squares)
    return torch.cat([loss.reshape(1), count, (error * error).sum(0), error.abs().sum(0), y.sum(0), (y * y).sum(0)])


def _log_loss(outputs: torch.Tensor, targets: torch.Tensor, loss: str) -> torch.Tensor:
    """The summed negative log probability of the true class: log-softmax, or
    for a network trained with binary cross-entropy its sigmoids normalized to
    sum to one (as scikit-learn's log_loss normalizes), clipped at float32's eps."""
    if loss != "binary_cross_entropy":
        logp = torch.log_softmax(outputs.double(), dim=1)
    else:
        p = torch.sigmoid(outputs.double())
        logp = torch.log((p / p.sum(dim=1, keepdim=True)).clamp_min(torch.finfo(torch.float32).eps))
    return -logp.gather(1, targets[:, None]).sum()


def _detailed(sums: list[float], count: int, detail: Detail) -> dict[str, Any]:
    """Top-k, log loss, the confusion matrix (rows: true class, columns:
    predicted) and precision, recall and F1 per class (0 where undefined, as
    scikit-learn's zero_division=0) with their unweighted (macro) means."""
    c = detail.num_classes
    log_loss, top_k = sums[0], sums[1]
    confusion = np.array(sums[2:2 + c * c], dtype=np.float64).reshape(c, c).round().astype(np.int64)
    true_positive = np.diag(confusion).astype(np.float64)
    predicted, actual = confusion.sum(axis=0), confusion.sum(axis=1)

    def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)

    precision, recall = ratio(true_positive, predicted), ratio(true_positive, actual)
    f1 = ratio(2 * precision * recall, precision + recall)
    names = list(detail.class_names) if detail.class_names else [str(i) for i in range(c)]
    k = min(detail.top_k, c)
    nan = float("nan")
    return {f"top{k}_accuracy": top_k / count if count else nan, f"top{k}_error": 1.0 - top_k / count if count else nan,
            "log_loss": log_loss / count if count else nan,
            "precision": {n: float(v) for n, v in zip(names, precision)},
            "recall": {n: float(v) for n, v in zip(names, recall)},
            "f1": {n: float(v) for n, v in zip(names, f1)},
            "support": {n: int(v) for n, v in zip(names, actual)},
            "macro_precision": float(precision.mean()), "macro_recall": float(recall.mean()),
            "macro_f1": float(f1.mean()), "class_names": names, "confusion_matrix": confusion.tolist()}


def _metrics(sums: list[float], task: Task) -> dict[str, float]:
    if task.classifies:
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
    collective); a reduction folds what is pending into both windows' global sums.
    The epoch's mean starts both again: a log line's mean never spans an epoch."""

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
        again (the interval too, at the epoch's end). A collective: every rank
        calls it at the same step."""
        totals = torch.stack([self.pending_sum, torch.tensor(float(self.pending_count), dtype=torch.float64,
                                                             device=self.device)])
        loss_sum, count = comm.all_reduce_sum(totals).tolist()
        self.pending_sum.zero_()
        self.pending_count = 0
        for w in self.windows.values():
            w[0] += loss_sum
            w[1] += int(count)
        total, n = self.windows[window]
        for restarted in (self.windows if window == "epoch" else (window,)):
            self.windows[restarted] = [0.0, 0]
        return total / n if n else float("nan")

    def state_dict(self) -> dict:
        return {"pending_sum": self.pending_sum.detach().cpu().clone(), "pending_count": self.pending_count,
                "windows": {k: list(v) for k, v in self.windows.items()}}

    def load_state_dict(self, state: dict, include_pending: bool = True) -> None:
        if include_pending:
            self.pending_sum.copy_(state["pending_sum"])
            self.pending_count = int(state["pending_count"])
        self.windows = {k: [float(v[0]), int(v[1])] for k, v in state["windows"].items()}
