"""In-memory data sources behind one small interface: `build_splits(cfg)` gives
train/validation/test tensors, the input shape and the number of classes.

Inputs are normalized as `data.normalize` says (`auto`: per feature for the
tabular sets, per channel for the digits' images) with the training split's
statistics (never the validation or test split's), by the same code that
normalizes prepared shards when they are read (normalization.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dist_train.config import DataConfig
from dist_train.data.builtin import DIGITS_SHAPE, TABULAR, RawSet, digits, synthetic, tabular
from dist_train.data.normalization import Normalizer, Preprocess, normalization_stats
from dist_train.tasks import CLASSIFICATION, Task


@dataclass(frozen=True)
class InputSpec:
    """One raw sample as the data source gives it (before preprocessing) and
    how training preprocessed it: what a model must carry to take raw inputs.
    `source`: what new inputs must look like beyond shape and dtype (the
    feature columns of a CSV, the size and colour of images, the data set's
    name)."""

    shape: tuple[int, ...]
    dtype: str  # of the raw inputs: "uint8", "float32", ...
    preprocess: Preprocess  # on the CPU
    normalize: str  # the mode data.normalize resolved to for these inputs (never auto)
    class_names: tuple[str, ...] | None = None
    source: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Split:
    inputs: torch.Tensor  # float32, (N, *input_shape)
    targets: torch.Tensor  # int64 class indices (N,), or float32 real values (N,) or (N, K)

    def __len__(self) -> int:
        return int(self.targets.shape[0])


@dataclass(frozen=True)
class Splits:
    train: Split
    val: Split
    test: Split
    input_shape: tuple[int, ...]
    num_classes: int  # 0 for real-valued targets
    task: Task = CLASSIFICATION
    input_spec: InputSpec | None = None  # None: inputs made by hand (tests), float32 and not normalized

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", Task(self.task))  # a Task, or its name

    @property
    def num_outputs(self) -> int:
        """What the model must output per sample: a score per class, or one value per target."""
        return self.task.num_outputs(self.num_classes, tuple(self.train.targets.shape[1:]))


def input_shape_of(cfg: DataConfig) -> tuple[int, ...]:
    """The shape of one input of an in-memory source, without loading it."""
    if cfg.source == "digits":
        return DIGITS_SHAPE
    if cfg.source in TABULAR:
        return (TABULAR[cfg.source][1],)
    return (cfg.num_features,)


def task_of(cfg: DataConfig) -> Task | None:
    """The task of a built-in source; None when only the data knows."""
    if cfg.source in TABULAR:
        return TABULAR[cfg.source][2]
    return CLASSIFICATION if cfg.source in ("digits", "synthetic") else None


def raw_set(cfg: DataConfig) -> RawSet:
    """The samples of a built-in in-memory source, before the split."""
    if cfg.source == "digits":
        return digits()
    if cfg.source == "synthetic":
        return synthetic(cfg.num_samples, (cfg.num_features,), cfg.num_classes, cfg.split_seed)
    if cfg.source in TABULAR:
        return tabular(cfg.source)
    raise AssertionError(cfg.source)  # shards are streamed (dist_train.data.stream), never built here


def raw_split(cfg: DataConfig, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One split of a built-in source as the source gives it (not normalized):
    what a model bundle, which normalizes itself, is evaluated on."""
    raw = raw_set(cfg)
    n = len(raw.targets)
    index = dict(zip(("train", "val", "test"), split_indices(n, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)))
    return raw.inputs.reshape(n, *raw.input_shape)[index[split]], raw.targets[index[split]]


def build_splits(cfg: DataConfig) -> Splits:
    raw = raw_set(cfg)
    return split_and_normalize(raw.inputs, raw.targets, raw.input_shape, raw.num_classes, cfg, raw.task,
                               raw.class_names, {"name": cfg.source, **({"features": list(raw.feature_names)}
                                                                         if raw.feature_names else {})})


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """(train, val, test) indices: one seeded shuffle, validation and test cut off
    the front. `dist-train prepare` uses the same split, so shards and memory agree."""
    order = np.random.default_rng(seed).permutation(n)
    n_val, n_test = int(round(n * val_fraction)), int(round(n * test_fraction))
    return order[n_val + n_test:], order[:n_val], order[n_val:n_val + n_test]


def split_and_normalize(inputs: np.ndarray, targets: np.ndarray, input_shape: tuple[int, ...],
                        num_classes: int, cfg: DataConfig, task: Task = CLASSIFICATION,
                        class_names: tuple[str, ...] | None = None, source: dict[str, Any] | None = None) -> Splits:
    """Split with `cfg.split_seed` and normalize every split with the training
    split's statistics, once, on the CPU (the loaders then move the samples)."""
    n = len(targets)
    train_idx, val_idx, test_idx = split_indices(n, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
    inputs = inputs.reshape(n, *input_shape)
    normalize = Normalizer(normalization_stats(inputs[train_idx]), input_shape, cfg.normalize, "cpu")
    spec = InputSpec(tuple(input_shape), str(inputs.dtype), normalize.preprocess, normalize.mode, class_names,
                     source or {})
    x = normalize(torch.from_numpy(inputs))
    y = torch.from_numpy(targets.astype(task.numpy_dtype))

    def take(idx: np.ndarray) -> Split:
        index = torch.from_numpy(idx)
        return Split(x[index].contiguous(), y[index].contiguous())

    return Splits(take(train_idx), take(val_idx), take(test_idx), input_shape, num_classes, task, spec)
