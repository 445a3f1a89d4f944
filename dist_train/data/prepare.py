"""`dist-train prepare`: turn a data source into train/validation/test shards.

Sources: scikit-learn's digits (the built-in default), MNIST-format IDX files
from a directory (MNIST, Fashion-MNIST: Debian's `dataset-fashion-mnist`
installs them under /usr/share/datasets/fashion-mnist), synthetic data, and
what people have on disk: NumPy arrays (`arrays`, numpy_files.py), a folder of
images per class (`imagefolder`, image_folder.py) and a CSV table (`csv`,
csv_table.py). Samples are stored as they come (uint8 pixels stay uint8);
normalization statistics of the training split go into the manifest and are
applied when reading.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dist_train.data.builtin import digits, synthetic
from dist_train.data.idx import load_idx_split
from dist_train.data.shards import Manifest, write_dataset
from dist_train.data.sources import split_indices
from dist_train.data.targets import Targets
from dist_train.errors import DistTrainError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
SOURCES = ("digits", "idx", "fashion-mnist", "synthetic", "arrays", "imagefolder", "csv")
# The options only some file sources read (None when not given), with the
# command-line spelling used in messages: one given to another source is refused
# rather than silently ignored.
FILE_OPTIONS = {"inputs": ("--inputs", ("arrays",)), "targets": ("--targets", ("arrays",)),
                "inputs_key": ("--inputs-key", ("arrays",)), "targets_key": ("--targets-key", ("arrays",)),
                "task": ("--task", ("arrays", "csv")), "csv": ("--csv", ("csv",)), "target": ("--target", ("csv",)),
                "features": ("--features", ("csv",)), "image_size": ("--image-size", ("imagefolder",)),
                "color": ("--color", ("imagefolder",))}


@dataclass(frozen=True)
class PrepareOptions:
    out: Path
    source_dir: Path | None = None
    train_shards: int = 8
    eval_shards: int = 2
    block_size: int = 256
    val_fraction: float = 0.15
    test_fraction: float = 0.15  # digits and synthetic only: IDX data sets ship their own test split
    split_seed: int = 0
    num_samples: int = 4096  # synthetic
    input_shape: tuple[int, ...] = (1, 28, 28)  # synthetic
    num_classes: int = 10  # synthetic
    inputs: Path | None = None  # arrays: .npy, or .npz holding inputs and targets
    targets: Path | None = None  # arrays: .npy/.npz (default: the --inputs .npz)
    inputs_key: str | None = None  # arrays: the array in an .npz
    targets_key: str | None = None
    task: str | None = None  # arrays, csv: auto (default) | classification | regression
    csv: Path | None = None  # csv: the file
    target: str | None = None  # csv: the target column
    features: tuple[str, ...] | None = None  # csv: feature columns (default: all but the target)
    image_size: tuple[int, ...] | None = None  # imagefolder: (H, W)
    color: str | None = None  # imagefolder: grey | rgb (default)


def prepare(name: str, opts: PrepareOptions) -> Manifest:
    if name not in SOURCES:
        raise DistTrainError(f"unknown data set {name!r}; choose one of: {', '.join(SOURCES)}")
    for label, value in (("--shards", opts.train_shards), ("--eval-shards", opts.eval_shards),
                         ("--block-size", opts.block_size)):
        if value < 1:
            raise DistTrainError(f"{label} must be at least 1, got {value}")
    _check_fractions(name, opts)
    for field, (option, users) in FILE_OPTIONS.items():
        if getattr(opts, field) is not None and name not in users:
            raise DistTrainError(f"{option} is for `prepare {' / '.join(users)}`, not `prepare {name}`; drop it")
    task, class_names = "classification", None
    if name in ("arrays", "imagefolder", "csv"):
        classes, splits, task, class_names, source = _prepare_files(name, opts)
    elif name in ("digits", "synthetic"):
        classes, splits, source = _prepare_builtin(name, opts)
    else:  # idx, fashion-mnist
        directory = opts.source_dir or (Path(FASHION_MNIST_DIR) if name == "fashion-mnist" else None)
        if directory is None:
            raise DistTrainError("`prepare idx` needs --source-dir DIR holding the MNIST-format files")
        if not Path(directory).is_dir():
            hint = " (install it with `apt-get install dataset-fashion-mnist`)" if name == "fashion-mnist" else ""
            raise DistTrainError(f"source directory {directory} does not exist{hint}")
        x_train, y_train = load_idx_split(Path(directory), "train")
        x_test, y_test = load_idx_split(Path(directory), "t10k")
        # validation is cut from the training file by the seeded split; the test file stays the test split
        splits = {**_seeded_split(x_train[:, None], y_train, opts.val_fraction, 0.0, opts.split_seed),
                  "test": (x_test[:, None], y_test)}
        classes = int(max(y_train.max(), y_test.max())) + 1
        source = {"source": "idx", "directory": str(directory)}
    shards = {"train": opts.train_shards, "val": opts.eval_shards, "test": opts.eval_shards}
    for split, (_, targets) in splits.items():
        if len(targets) < shards[split]:
            raise DistTrainError(f"the {split} split has {len(targets)} samples, fewer than its {shards[split]} shards; "
                                 "ask for fewer shards")
    return write_dataset(opts.out, name, splits, classes, shards, opts.block_size,
                         {**source, "split_seed": opts.split_seed}, task=task, class_names=class_names)


def _prepare_builtin(name: str, opts: PrepareOptions) -> tuple[int, dict[str, tuple[np.ndarray, np.ndarray]], dict]:
    """digits and synthetic from the arrays the in-memory sources use, split
    with their seeded split: (classes, splits, source)."""
    if name == "digits":
        raw = digits()  # uint8 pixels 0..16, stored as they are
        inputs, source = raw.inputs, {"source": "sklearn.datasets.load_digits"}
    else:
        raw = synthetic(opts.num_samples, opts.input_shape, opts.num_classes, opts.split_seed)
        inputs, source = raw.inputs, {"source": "synthetic", "seed": opts.split_seed}
        if len(opts.input_shape) >= 2:  # stored as class-dependent uint8 images, as image data sets are
            inputs = np.clip(inputs * 40 + 128, 0, 255).astype(np.uint8)
    return raw.num_classes, _seeded_split(inputs, raw.targets, opts.val_fraction, opts.test_fraction,
                                          opts.split_seed), source


def _seeded_split(inputs: np.ndarray, targets: np.ndarray, val_fraction: float, test_fraction: float,
                  seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The one seeded split of every source (IDX: of its training file), the
    in-memory sources' `split_indices`, so shards and memory of a built-in set
    hold the same samples in the same order."""
    train, val, test = split_indices(len(targets), val_fraction, test_fraction, seed)
    return {"train": (inputs[train], targets[train]), "val": (inputs[val], targets[val]),
            "test": (inputs[test], targets[test])}


def _check_fractions(name: str, opts: PrepareOptions) -> None:
    """The split fractions, for every source (IDX sets ship their own test
    split: only the validation fraction applies)."""
    test_fraction = 0.0 if name in ("idx", "fashion-mnist") else opts.test_fraction
    for option, value in (("--val-fraction", opts.val_fraction), ("--test-fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise DistTrainError(f"{option} {value} must be at least 0 and below 1")
    if opts.val_fraction + test_fraction >= 1.0:
        raise DistTrainError(f"--val-fraction {opts.val_fraction} + --test-fraction {test_fraction} leave no "
                             "training samples; their sum must be below 1")


def _prepare_files(name: str, opts: PrepareOptions) -> tuple[int, dict[str, tuple[np.ndarray, np.ndarray]], str,
                                                              tuple[str, ...] | None, dict]:
    """Read a file source whole, then split it with the seeded split the
    built-in sets use: (classes, splits, task, class_names, source)."""
    if name == "arrays":
        from dist_train.data.numpy_files import load_arrays

        if opts.inputs is None:
            raise DistTrainError("`prepare arrays` needs --inputs FILE (.npy with --targets FILE, or one .npz "
                                 "holding both)")
        arrays = load_arrays(opts.inputs, opts.targets, opts.inputs_key, opts.targets_key, opts.task or "auto")
        inputs, targets, source = arrays.inputs, arrays.targets, arrays.source
    elif name == "csv":
        from dist_train.data.csv_table import load_csv

        if opts.csv is None:
            raise DistTrainError("`prepare csv` needs --csv FILE (a header line, then one row per sample) and "
                                 "--target COLUMN")
        table = load_csv(opts.csv, opts.target, opts.features, opts.task or "auto")
        inputs, targets, source = table.inputs, table.targets, table.source
    else:
        from dist_train.data.image_folder import load_image_folder

        if opts.source_dir is None:
            raise DistTrainError("`prepare imagefolder` needs --source-dir ROOT, the folder holding "
                                 "ROOT/<class name>/<image> (PNG or JPEG)")
        folder = load_image_folder(opts.source_dir, opts.image_size, opts.color or "rgb")
        inputs, source = folder.inputs, folder.source
        targets = Targets(folder.targets, "classification", len(folder.class_names), folder.class_names)
    splits = _seeded_split(inputs, targets.values, opts.val_fraction, opts.test_fraction, opts.split_seed)
    return targets.num_classes, splits, targets.task, targets.class_names, source
