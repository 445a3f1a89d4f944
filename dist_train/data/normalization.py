"""Input normalization, one implementation for every path: the statistics of
the training split (which `prepare` writes into the manifest and the in-memory
sources compute the same way) and the `Normalizer` that applies them to a
batch. In-memory data and shards of the same set therefore go through the same
float32 arithmetic and give the same numbers.

Statistics are computed in float64 and kept raw (the manifest stores them as
they are); the floor for constant inputs is applied when a Normalizer is built,
so manifests already on disk keep their meaning.

`auto` (data.normalize's default) is decided from the shape of one input, so
every rank and every path (in memory, shards, custom datasets) decides the
same: inputs of one axis, (F,), are tabular features with scales of their own
and get one mean and std per feature; inputs of two axes or more, (C, H, W),
are channels of positions (pixels) and get one pair per channel. A Normalizer
holds the resolved mode, which is what the `start` record and a model bundle
carry.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

MODES = ("per_channel", "per_feature", "none")
AUTO = "auto"  # resolved by `resolved_mode` from the inputs' shape: never stored in a Normalizer
# A feature or channel whose std is below this is constant: it is only centred,
# never divided by (almost) zero.
STD_FLOOR = 1e-8

Stats = dict[str, dict[str, list[float]]]  # {"per_channel": {"mean": [...], "std": [...]}, "per_feature": {...}}


def resolved_mode(mode: str, input_shape: tuple[int, ...]) -> str:
    """The mode `mode` means for inputs of `input_shape` (one sample's):
    `auto` is per_feature for flat inputs (F,) and per_channel for (C, ...);
    any other mode is itself."""
    if mode != AUTO:
        return mode
    return "per_channel" if len(input_shape) >= 2 else "per_feature"


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


Sums = tuple[int, np.ndarray, np.ndarray]  # (samples, float64 sum of x per feature, of x * x per feature)


def chunk_sums(chunk: np.ndarray) -> Sums:
    """One chunk's float64 sums per feature: a pure function of the chunk, so
    it is the same number wherever (on whichever rank) it is computed."""
    x = chunk.astype(np.float64).reshape(len(chunk), -1)
    return len(x), x.sum(0), (x * x).sum(0)


def fold_sums(sums: Iterable[Sums]) -> Sums:
    """Chunk sums added in the order given, starting from 0. Float addition is
    not associative: the result is the same bits only for the same chunks in
    the same order, which is why callers fix both (dist_train.data.custom)."""
    count, total, squares = 0, 0.0, 0.0
    for n, chunk_total, chunk_squares in sums:
        count, total, squares = count + n, total + chunk_total, squares + chunk_squares
    return count, np.asarray(total, dtype=np.float64), np.asarray(squares, dtype=np.float64)


def stats_of_sums(sums: Sums, input_shape: tuple[int, ...]) -> Stats:
    """`normalization_stats` from a training split's folded sums: per feature,
    and pooled per channel (axis 0 of one input; flat inputs are one channel)."""
    count, total, squares = sums

    def mean_std(sums: np.ndarray, sq: np.ndarray, n: int) -> tuple[list[float], list[float]]:
        mean = sums / n
        return mean.tolist(), np.sqrt(np.maximum(sq / n - mean * mean, 0.0)).tolist()

    channels = input_shape[0] if len(input_shape) >= 2 else 1
    per_position = total.size // channels
    c_mean, c_std = mean_std(total.reshape(channels, -1).sum(1), squares.reshape(channels, -1).sum(1),
                             count * per_position)
    f_mean, f_std = mean_std(total, squares, count)
    return {"per_channel": {"mean": c_mean, "std": c_std}, "per_feature": {"mean": f_mean, "std": f_std}}


def streamed_stats(chunks: Iterable[np.ndarray], input_shape: tuple[int, ...]) -> Stats:
    """`normalization_stats` over a training split read in chunks (a user's
    dataset that does not fit in memory at once): float64 sums of x and x^2 per
    feature, chunk after chunk, pooled per channel the same way."""
    return stats_of_sums(fold_sums(chunk_sums(c) for c in chunks), input_shape)


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
    """The Preprocess (on the CPU) for `mode` (resolved already) with the training split's statistics."""
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
    the training split's statistics: (x - mean) * (1 / std), in float32.
    `mode`: data.normalize's value; `self.mode` is what it resolved to for
    these inputs (never `auto`)."""

    def __init__(self, stats: Stats, input_shape: tuple[int, ...], mode: str, device: str) -> None:
        mode = resolved_mode(mode, input_shape)
        self.mode, self.device = mode, device
        self.preprocess = preprocess_of(stats, input_shape, mode)  # on the CPU: what a model bundle keeps
        self._on_device = preprocess_of(stats, input_shape, mode).to(device)

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        return self._on_device(inputs.to(self.device, non_blocking=True))
