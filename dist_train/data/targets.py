"""What a column of targets means: class indices (classification) or real
values (regression). One set of rules for every file source (`prepare arrays`,
`prepare csv`), so the same numbers become the same shards whichever file
they came from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dist_train.errors import DistTrainError
from dist_train.tasks import CLASSIFICATION, REGRESSION, Task

TASKS = ("auto", *(t.value for t in Task))  # what --task accepts
SampleName = Callable[[int], str]  # how an error names sample i ("sample 7", "line 9")


def _sample(i: int) -> str:
    return f"sample {i}"


@dataclass(frozen=True)
class Targets:
    values: np.ndarray  # int64 (N,) class indices, or float32 (N,) / (N, K) regression values
    task: Task
    num_classes: int  # 0 for regression
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", Task(self.task))  # a Task, or its name


def check_task(task: str) -> None:
    if task not in TASKS:
        raise DistTrainError(f"--task {task!r} is not one of: {', '.join(TASKS)}")


def class_indices(values: np.ndarray, where: str, class_names: tuple[str, ...] | None = None,
                  sample: SampleName = _sample) -> Targets:
    """Integer-valued, non-negative (N,) targets as int64 class indices; the
    number of classes is the largest index + 1 (or len(class_names))."""
    if values.ndim != 1:
        raise DistTrainError(f"{where}: classification targets must have shape (N,) (one class index per sample), "
                             f"got {values.shape}; pass --task regression when each sample has several real values")
    if values.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(values) | (values != np.round(values)))
        if len(bad):
            raise DistTrainError(f"{where}: target {values[bad[0]].item()!r} of {sample(bad[0])} is not a class index "
                                 "(a whole number from 0); pass --task regression to predict real values")
    elif values.dtype.kind not in "iub":
        raise DistTrainError(f"{where}: targets of dtype {values.dtype} are neither class indices nor real values")
    if len(values) == 0:
        raise DistTrainError(f"{where}: there are no samples")
    indices = values.astype(np.int64)
    negative = np.flatnonzero(indices < 0)
    if len(negative):
        raise DistTrainError(f"{where}: target {indices[negative[0]]} of {sample(negative[0])} is a negative class "
                             "index; class indices run from 0 to (classes - 1): relabel the classes, or pass "
                             "--task regression to predict the value")
    num_classes = len(class_names) if class_names is not None else int(indices.max()) + 1
    return Targets(indices, CLASSIFICATION, num_classes, class_names)


def real_values(values: np.ndarray, where: str, sample: SampleName = _sample) -> Targets:
    """(N,) or (N, K) finite numbers as float32 regression targets."""
    if values.ndim not in (1, 2) or (values.ndim == 2 and values.shape[1] == 0):
        raise DistTrainError(f"{where}: regression targets must have shape (N,) or (N, K), got {values.shape}")
    if values.dtype.kind not in "iubf":
        raise DistTrainError(f"{where}: targets of dtype {values.dtype} are not real numbers")
    out = values.astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(out).reshape(len(out), -1).all(axis=1))
    if len(bad):
        raise DistTrainError(f"{where}: the target of {sample(bad[0])} is {values[bad[0]].tolist()!r}, not a finite "
                             "number (NaN, infinite or beyond float32); fix or drop that sample")
    return Targets(out, REGRESSION, 0)


def array_targets(values: np.ndarray, task: str, where: str) -> Targets:
    """Targets from a stored array. `auto`: an integer (or boolean) array of
    shape (N,) holds class indices, anything else is regression; the dtype
    says what the numbers are, where a CSV cell cannot."""
    check_task(task)
    chosen = (Task.of_targets(values.dtype, values.ndim) or REGRESSION) if task == "auto" else Task(task)
    return class_indices(values, where) if chosen.classifies else real_values(values, where)
