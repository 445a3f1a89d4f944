"""Input normalization, one implementation for every path: the statistics of
the training split (which `prepare` writes into the manifest and the in-memory
sources compute the same way) and the `Normalizer` that applies them to a
batch. In-memory data and shards of the same set therefore go through the same
float32 arithmetic and give the same numbers.

Statistics are computed in float64 and kept raw (the manifest stores them as
they are); the floor for constant inputs is applied when a Normalizer is built,
so manifests already on disk keep their meaning.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

MODES = ("per_channel", "per_feature", "none")
# A feature or channel whose std is below this is constant: it is only centred,
# never divided by (almost) zero.
STD_FLOOR = 1e-8

Stats = dict[str, dict[str, list[float]]]  # {"per_channel": {"mean": [...], "std": [...]}, "per_feature": {...}}


def normalization_stats(train_inputs: np.ndarray) -> Stats:
    """Mean and std of the training split (N, *input_shape) per channel (axis 1
    pooled over the rest; flat inputs count as one channel) and per feature."""
    x = train_inputs.astype(np.float64)
    axes = (0, *range(2, x.ndim)) if x.ndim >= 3 else None
    per_channel = ({"mean": x.mean(axis=axes).ravel().tolist(), "std": x.std(axis=axes).ravel().tolist()}
                   if axes else {"mean": [float(x.mean())], "std": [float(x.std())]})
    flat = x.reshape(len(x), -1)
    return {"per_channel": per_channel,
            "per_feature": {"mean": flat.mean(axis=0).tolist(), "std": flat.std(axis=0).tolist()}}


def streamed_stats(chunks: Iterable[np.ndarray], input_shape: tuple[int, ...]) -> Stats:
    """`normalization_stats` over a training split read in chunks (a user's
    dataset that does not fit in memory at once): float64 sums of x and x^2 per
    feature, pooled per channel the same way."""
    count, total, squares = 0, 0.0, 0.0
    for chunk in chunks:
        x = chunk.astype(np.float64).reshape(len(chunk), -1)
        count, total, squares = count + len(x), total + x.sum(0), squares + (x * x).sum(0)
    total, squares = np.asarray(total, dtype=np.float64), np.asarray(squares, dtype=np.float64)

    def mean_std(sums: np.ndarray, sq: np.ndarray, n: int) -> tuple[list[float], list[float]]:
        mean = sums / n
        return mean.tolist(), np.sqrt(np.maximum(sq / n - mean * mean, 0.0)).tolist()

    channels = input_shape[0] if len(input_shape) >= 2 else 1
    per_position = total.size // channels
    c_mean, c_std = mean_std(total.reshape(channels, -1).sum(1), squares.reshape(channels, -1).sum(1),
                             count * per_position)
    f_mean, f_std = mean_std(total, squares, count)
    return {"per_channel": {"mean": c_mean, "std": c_std}, "per_feature": {"mean": f_mean, "std": f_std}}


class Preprocess(nn.Module):
    """The input preprocessing as a module: raw inputs (uint8 pixels or numbers
    of any dtype) to float32, minus the training split's mean, times 1 / its
    std. Training normalizes through it (`Normalizer`) and every exported model
    carries it (`dist_train.predictor.Predictor`), so both compute the same
    float32 numbers. `mean`/`inv_std` None: only the cast to float32."""

    def __init__(self, mean: torch.Tensor | None, inv_std: torch.Tensor | None) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("inv_std", inv_std)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs.float()
        if self.mean is None:
            return x
        return (x - self.mean) * self.inv_std


def preprocess_of(stats: Stats, input_shape: tuple[int, ...], mode: str) -> Preprocess:
    """The Preprocess (on the CPU) for `mode` with the training split's statistics."""
    if mode not in MODES:
        raise ValueError(f"normalization mode {mode!r} is not one of {MODES}")
    if mode == "none":
        return Preprocess(None, None)
    mean = torch.tensor(stats[mode]["mean"], dtype=torch.float32)
    std = torch.tensor(stats[mode]["std"], dtype=torch.float32)
    std = torch.where(std < STD_FLOOR, torch.ones_like(std), std)
    if mode == "per_feature":
        mean, std = mean.reshape(input_shape), std.reshape(input_shape)
    elif len(input_shape) >= 2:  # one value per channel, broadcast over the positions
        view = [input_shape[0]] + [1] * (len(input_shape) - 1)
        mean, std = mean.reshape(view), std.reshape(view)
    return Preprocess(mean, 1.0 / std)


class Normalizer:
    """Inputs (uint8 pixels or floats) moved to `device` and standardized with
    the training split's statistics: (x - mean) * (1 / std), in float32."""

    def __init__(self, stats: Stats, input_shape: tuple[int, ...], mode: str, device: str) -> None:
        self.mode, self.device = mode, device
        self.preprocess = preprocess_of(stats, input_shape, mode)  # on the CPU: what a model bundle keeps
        self._on_device = preprocess_of(stats, input_shape, mode).to(device)

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        return self._on_device(inputs.to(self.device, non_blocking=True))
