"""The built-in data sets, drawn in one place: the in-memory sources
(sources.py) and `dist-train prepare` (prepare.py) both start from these
arrays, so with the same seed and split they hold the same samples in the same
order."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from dist_train.tasks import CLASSIFICATION, REGRESSION, Task


DIGITS_SHAPE = (1, 8, 8)


@dataclass(frozen=True)
class RawSet:
    inputs: np.ndarray  # (N, *input_shape), not normalized: uint8 pixels (digits), float32 features (synthetic)
    targets: np.ndarray  # int64 class indices (N,), or float32 real values (N,) for a regression set
    input_shape: tuple[int, ...]
    num_classes: int  # 0 for a regression set
    task: Task = CLASSIFICATION
    class_names: tuple[str, ...] | None = None
    feature_names: tuple[str, ...] | None = None  # of tabular sets, in order

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", Task(self.task))  # a Task, or its name


#: scikit-learn's small tabular sets, shipped with the package (no download):
#: name -> (loader name, number of features, task)
TABULAR = {"breast_cancer": ("load_breast_cancer", 30, CLASSIFICATION),
           "wine": ("load_wine", 13, CLASSIFICATION),
           "diabetes": ("load_diabetes", 10, REGRESSION)}


def tabular(name: str) -> RawSet:
    """breast_cancer (569 tumours, 30 measurements, benign or malignant), wine
    (178 wines, 13 chemical measurements, 3 cultivars) or diabetes (442
    patients, 10 measurements, a real-valued disease progression a year later,
    25 to 346), as scikit-learn ships them."""
    import sklearn.datasets

    loader, features, task = TABULAR[name]
    bunch = getattr(sklearn.datasets, loader)()
    inputs = bunch.data.astype(np.float32)
    names = tuple(str(n) for n in bunch.feature_names)
    if not task.classifies:
        return RawSet(inputs, bunch.target.astype(task.numpy_dtype), (features,), 0, task, feature_names=names)
    return RawSet(inputs, bunch.target.astype(task.numpy_dtype), (features,), int(bunch.target.max()) + 1, task,
                  tuple(str(n) for n in bunch.target_names), names)


def digits() -> RawSet:
    """scikit-learn's 1,797 real 8x8 handwritten digits, shipped with the
    package, as one-channel images. The pixel values are whole numbers 0..16,
    exact in uint8."""
    table = _digits_table()
    images, target = table[:, :64].reshape(-1, 8, 8), table[:, 64]
    return RawSet(images.astype(np.uint8)[:, None], target.astype(np.int64), DIGITS_SHAPE, 10)


def _digits_table() -> np.ndarray:
    """The digits as scikit-learn ships them (one CSV row per image: 64 pixels
    and the class), read straight from its data file: importing scikit-learn
    costs each worker most of a second at start-up, which the quick start
    feels. load_digits() is the fallback when the file is not where it was."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        path = os.path.join(root, "datasets", "data", "digits.csv.gz")
        if os.path.isfile(path):
            with gzip.open(path, "rt") as fh:
                return np.loadtxt(fh, delimiter=",")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.column_stack([bunch.data, bunch.target])


def synthetic(num_samples: int, input_shape: tuple[int, ...], num_classes: int, split_seed: int) -> RawSet:
    """Gaussian blobs, one per class, for fast tests and benchmarks: a center
    per class, then the classes of the samples, then unit noise around their
    centers. The order of the draws is part of the data set (tests and runs
    rely on these exact samples), so it never changes."""
    features = int(np.prod(input_shape))
    rng = np.random.default_rng(1234 + split_seed)
    centers = rng.normal(0.0, 1.0, size=(num_classes, features))
    targets = rng.integers(0, num_classes, size=num_samples)
    inputs = centers[targets] + rng.normal(0.0, 1.0, size=(num_samples, features))
    return RawSet(inputs.astype(np.float32).reshape(num_samples, *input_shape), targets.astype(np.int64),
                  tuple(input_shape), num_classes)
