"""The built-in data sets, drawn in one place: the in-memory sources
(sources.py) and `dist-train prepare` (prepare.py) both start from these
arrays, so with the same seed and split they hold the same samples in the same
order."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


DIGITS_SHAPE = (1, 8, 8)


@dataclass(frozen=True)
class RawSet:
    inputs: np.ndarray  # (N, *input_shape), not normalized: uint8 pixels (digits), float32 features (synthetic)
    targets: np.ndarray  # int64 class indices (N,)
    input_shape: tuple[int, ...]
    num_classes: int


def digits() -> RawSet:
    """scikit-learn's 1,797 real 8x8 handwritten digits, shipped with the
    package, as one-channel images. The pixel values are whole numbers 0..16,
    exact in uint8."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return RawSet(bunch.images.astype(np.uint8)[:, None], bunch.target.astype(np.int64), DIGITS_SHAPE, 10)


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
