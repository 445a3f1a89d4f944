"""`dist-train prepare`: turn a data source into train/validation/test shards.

The sources (digits, IDX files, Fashion-MNIST, synthetic data, NumPy arrays,
image folders, CSV tables), their options and readers are one table,
prepare_sources.SOURCES; here every source's samples are split by one seeded
split and written. Samples are stored as they come (uint8 pixels stay uint8);
normalization statistics of the training split go into the manifest and are
applied when reading.
"""

from __future__ import annotations

from dataclasses import field, make_dataclass, replace
from typing import Any

import numpy as np

from dist_train.data.prepare_sources import COMMON, SOURCES, Source, readers_of, source_options
from dist_train.data.shards import Manifest, write_dataset
from dist_train.data.sources import split_indices
from dist_train.errors import DistTrainError

# Made from the table of sources, so a new source's options need no edit here.
PrepareOptions = make_dataclass(
    "PrepareOptions",
    [(o.field, Any) if o.required else (o.field, Any, field(default=o.default_value())) for o in COMMON]
    + [(name, Any, field(default=None)) for name in source_options()],
    frozen=True)
PrepareOptions.__module__ = __name__  # make_dataclass's own module argument is Python 3.12's
PrepareOptions.__doc__ = """What to prepare: `out`, `train_shards`, `eval_shards`, `block_size`,
`val_fraction`, `test_fraction` and `split_seed` (prepare_sources.COMMON), and
every source's options by field (prepare_sources.SOURCES), None when not given:
the source's default then applies, and one given to a source that does not
read it is refused."""


def prepare(name: str, opts: PrepareOptions) -> Manifest:
    """Read source `name` with `opts` (a PrepareOptions) and write its train,
    validation and test shards to opts.out. Everything is read and checked
    before anything is written."""
    source = SOURCES.get(name)
    if source is None:
        raise DistTrainError(f"unknown data set {name!r}; choose one of: {', '.join(SOURCES)}")
    for label, value in (("--shards", opts.train_shards), ("--eval-shards", opts.eval_shards),
                         ("--block-size", opts.block_size)):
        if value < 1:
            raise DistTrainError(f"{label} must be at least 1, got {value}")
    _check_fractions(source, opts)
    own = {option.field for option in source.options}
    for key, option in source_options().items():
        if getattr(opts, key) is not None and key not in own:
            raise DistTrainError(f"{option.flag} is for `prepare {' / '.join(readers_of(key))}`, not "
                                 f"`prepare {name}`; drop it")
    read = source.read(replace(opts, **{o.field: o.default_value() for o in source.options
                                        if getattr(opts, o.field) is None}))
    test_fraction = opts.test_fraction if read.test is None else 0.0  # a test split the source ships stays it
    splits = _seeded_split(read.inputs, read.targets.values, opts.val_fraction, test_fraction, opts.split_seed)
    if read.test is not None:
        splits["test"] = read.test
    shards = {"train": opts.train_shards, "val": opts.eval_shards, "test": opts.eval_shards}
    for split, (_, targets) in splits.items():
        if len(targets) < shards[split]:
            raise DistTrainError(f"the {split} split has {len(targets)} samples, fewer than its {shards[split]} shards; "
                                 "ask for fewer shards")
    return write_dataset(opts.out, name, splits, read.targets.num_classes, shards, opts.block_size,
                         {**read.source, "split_seed": opts.split_seed}, task=read.targets.task,
                         class_names=read.targets.class_names)


def _seeded_split(inputs: np.ndarray, targets: np.ndarray, val_fraction: float, test_fraction: float,
                  seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The one seeded split of every source (IDX: of its training file), the
    in-memory sources' `split_indices`, so shards and memory of a built-in set
    hold the same samples in the same order."""
    train, val, test = split_indices(len(targets), val_fraction, test_fraction, seed)
    return {"train": (inputs[train], targets[train]), "val": (inputs[val], targets[val]),
            "test": (inputs[test], targets[test])}


def _check_fractions(source: Source, opts: PrepareOptions) -> None:
    """The split fractions, for every source (one that ships its test split:
    only the validation fraction applies)."""
    test_fraction = 0.0 if source.own_test_split else opts.test_fraction
    for option, value in (("--val-fraction", opts.val_fraction), ("--test-fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise DistTrainError(f"{option} {value} must be at least 0 and below 1")
    if opts.val_fraction + test_fraction >= 1.0:
        raise DistTrainError(f"--val-fraction {opts.val_fraction} + --test-fraction {test_fraction} leave no "
                             "training samples; their sum must be below 1")
