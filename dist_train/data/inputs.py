"""Samples to predict or evaluate on, raw (as the data source gives them:
a model bundle normalizes its own inputs), in the forms people hold them:

- a CSV file: the model's feature columns by name, in any order (the target
  column too, for evaluation); any other column is refused;
- NumPy arrays: a `.npy` of inputs, or an `.npz` holding inputs (x, X,
  inputs) and, for evaluation, targets (y, Y, targets, labels);
- image files, or a folder of them (any depth; for evaluation
  ROOT/<class name>/<image>), decoded and resized as `prepare imagefolder`
  does, to the size the model was trained on;
- a directory of prepared shards (one split of it);
- in Python: arrays or tensors, or a map-style dataset;
- the run's own split again (the data section the run trained with).

Every reader checks the samples against the model (shape, columns, classes)
before anything is predicted and names what does not fit. `Samples.fetch(lo,
hi)` reads a range, so each rank of a distributed job reads only its share
(images are decoded by the rank that predicts them)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dist_train.errors import DistTrainError

Fetch = Callable[[int, int], tuple[torch.Tensor, "torch.Tensor | None"]]
IMAGE_SOURCES = ("imagefolder", "idx", "fashion-mnist")  # data sets whose samples are 8-bit images


@dataclass(frozen=True)
class Samples:
    count: int
    names: list[str]  # what each sample is (a file, a CSV line, an index), in order
    fetch: Fetch  # samples [lo, hi): raw inputs and (when known) targets
    has_targets: bool
    what: str  # for messages: "data.csv", "64 images under photos", ...


def open_samples(sources: list[str | Path], spec: Any, split: str = "test", targets: bool = False) -> Samples:
    """Samples from files on disk (see the module's docstring); `targets`:
    the targets are needed too (evaluation)."""
    paths = [Path(s) for s in sources]
    for path in paths:
        if not path.exists():
            raise DistTrainError(f"input {path} does not exist")
    first = paths[0]
    if len(paths) == 1 and first.is_dir() and (first / "manifest.json").is_file():
        return shard_samples(first, spec, split, targets)
    if all(p.is_dir() or p.suffix.lower() in IMAGE_SUFFIXES for p in paths):
        return image_samples(paths, spec, targets)
    if len(paths) > 1:
        raise DistTrainError(f"several inputs ({', '.join(map(str, paths))}) are only for image files; give one CSV, "
                             ".npy or .npz file, or one prepared data set")
    if first.suffix.lower() == ".csv":
        return csv_samples(first, spec, targets)
    if first.suffix.lower() in (".npy", ".npz"):
        return npz_samples(first, spec, targets)
    raise DistTrainError(f"input {first} is not a CSV file, a .npy/.npz file, an image (PNG, JPEG) or a folder of "
                         "them, nor a prepared data set (a directory with manifest.json)")


# ------------------------------------------------------------ checks against the model

def check_inputs(shape: tuple[int, ...], spec: Any, what: str) -> None:
    expected = tuple(spec.inputs.shape)
    if tuple(shape[1:]) != expected:
        raise DistTrainError(f"{what}: inputs of shape {tuple(shape)} do not fit the model, which takes samples of "
                             f"shape {expected}, i.e. ({', '.join(['N', *map(str, expected)])})")


def class_targets(values: np.ndarray, spec: Any, what: str, names_of: Callable[[int], str]) -> np.ndarray:
    """Class indices checked against the model's classes; text labels are
    looked up in its class names."""
    if not spec.task.classifies:
        values = np.asarray(values, dtype=np.float64)
        want = (len(values), *spec.target_shape)
        if values.size != int(np.prod(want)):
            raise DistTrainError(f"{what}: targets of shape {values.shape} do not fit the model's {want}")
        return values.reshape(want).astype(np.float32)
    values = np.asarray(values)
    if values.dtype.kind in "US":  # class names
        names = spec.class_names
        if names is None:
            raise DistTrainError(f"{what}: targets are names ({values[0]!r}, ...), but the model's classes have none; "
                                 f"give class indices 0..{spec.num_outputs - 1}")
        position = {name: i for i, name in enumerate(names)}
        unknown = sorted({str(v) for v in values if str(v) not in position})
        if unknown:
            raise DistTrainError(f"{what}: {', '.join(repr(u) for u in unknown[:5])} "
                                 f"{'is not a class' if len(unknown) == 1 else 'are not classes'} of the model "
                                 f"({', '.join(names)})")
        return np.array([position[str(v)] for v in values], dtype=np.int64)
    if values.dtype.kind == "f" and not np.all(np.isfinite(values) & (values == np.round(values))):
        bad = int(np.flatnonzero(~(np.isfinite(values) & (values == np.round(values))))[0])
        raise DistTrainError(f"{what}: target {values[bad]!r} of {names_of(bad)} is not a class index")
    values = values.astype(np.int64)
    outside = np.flatnonzero((values < 0) | (values >= spec.num_outputs))
    if len(outside):
        raise DistTrainError(f"{what}: target {values[outside[0]]} of {names_of(int(outside[0]))} is not a class of "
                             f"the model (0 to {spec.num_outputs - 1})")
    return values


def _arrays(x: np.ndarray, y: np.ndarray | None, names: list[str], what: str) -> Samples:
    xt = torch.from_numpy(np.ascontiguousarray(x))
    yt = torch.from_numpy(np.ascontiguousarray(y)) if y is not None else None
    return Samples(len(xt), names, lambda lo, hi: (xt[lo:hi], None if yt is None else yt[lo:hi]), yt is not None, what)


# ------------------------------------------------------------ Python objects

def array_samples(inputs: Any, targets: Any, spec: Any) -> Samples:
    """Arrays or tensors given in Python (one sample or a batch)."""
    x = inputs.detach().cpu().numpy() if isinstance(inputs, torch.Tensor) else np.asarray(inputs)
    if tuple(x.shape) == tuple(spec.inputs.shape):
        x = x[None]
    check_inputs(x.shape, spec, "the inputs given")
    y = None
    if targets is not None:
        y = targets.detach().cpu().numpy() if isinstance(targets, torch.Tensor) else np.asarray(targets)
        if len(y) != len(x):
            raise DistTrainError(f"{len(x)} inputs but {len(y)} targets")
        y = class_targets(y, spec, "the targets given", lambda i: f"sample {i}")
    return _arrays(x, y, [str(i) for i in range(len(x))], "the inputs given")


def dataset_samples(dataset: Any, spec: Any, what: str = "the dataset given") -> Samples:
    """A map-style dataset of (input, target) items (a custom source's split)."""
    from dist_train.data.custom import fetch_items

    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        raise DistTrainError(f"{what} is a {type(dataset).__name__}, not a map-style dataset (__getitem__, __len__) "
                             "of (input, target) items")
    x, _ = fetch_items(dataset, [0])
    check_inputs(tuple(x.shape), spec, what)

    def fetch(lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = fetch_items(dataset, list(range(lo, hi)))
        y = torch.from_numpy(class_targets(y.numpy(), spec, what, lambda i: f"item {lo + i}"))
        return x, y

    return Samples(len(dataset), [str(i) for i in range(len(dataset))], fetch, True, what)


# ------------------------------------------------------------ files

def csv_samples(path: Path, spec: Any, targets: bool) -> Samples:
    """The model's feature columns of a CSV file, by name and in any order;
    its target column for evaluation. A missing or unknown column, a cell that
    is not a number: one error naming the line and column."""
    from dist_train.data.csv_table import numeric_columns, read_rows

    source = spec.inputs.source
    features = source.get("features")
    if not features:
        raise DistTrainError(f"{path}: this model was trained on {source.get('name', 'data')} whose features have no "
                             f"column names, so a CSV cannot be matched to them; give the inputs as a .npy or .npz "
                             f"array of shape (N, {', '.join(map(str, spec.inputs.shape))})")
    target = source.get("target") or "target"
    header, rows = read_rows(path)
    missing = [f for f in features if f not in header]
    unknown = [h for h in header if h not in features and h != target]
    takes = f"the model takes the columns {', '.join(features)} (and {target!r} as the target)"
    if missing:
        raise DistTrainError(f"{path} has no column{'s' if len(missing) > 1 else ''} "
                             f"{', '.join(repr(m) for m in missing)}; {takes}")
    if unknown:
        raise DistTrainError(f"{path} has the unknown column{'s' if len(unknown) > 1 else ''} "
                             f"{', '.join(repr(u) for u in unknown)}; {takes}: drop the others")
    x = numeric_columns(path, header, rows, list(features), "fix those values")
    lines = [line for line, _ in rows]
    y = None
    if targets:
        if target not in header:
            raise DistTrainError(f"{path} has no target column {target!r}, which evaluation needs")
        at = header.index(target)
        labels = [row[at].strip() for _, row in rows]
        if spec.task.classifies and spec.class_names is not None:
            raw: np.ndarray = np.array(labels, dtype=str)
        else:
            numbers = numeric_columns(path, header, rows, [target], "fix the targets")
            raw = numbers[:, 0].astype(np.float64)
        y = class_targets(raw, spec, f"{path} column {target!r}", lambda i: f"line {lines[i]}")
    return _arrays(x.reshape(len(x), *spec.inputs.shape), y, [f"line {line}" for line in lines], str(path))


def npz_samples(path: Path, spec: Any, targets: bool) -> Samples:
    """A .npy of inputs, or an .npz holding inputs (x, X or inputs) and targets
    (y, Y, targets or labels); read without unpickling."""
    from dist_train.data.numpy_files import INPUT_KEYS, TARGET_KEYS

    def pick(arrays: Any, keys: tuple[str, ...], what: str) -> np.ndarray | None:
        found = [k for k in keys if k in arrays.files]
        if len(found) > 1:
            raise DistTrainError(f"{path} holds several {what} arrays ({', '.join(found)}); keep one")
        return arrays[found[0]] if found else None

    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            x, y_raw = loaded, None
        else:
            with loaded:
                x, y_raw = pick(loaded, INPUT_KEYS, "input"), pick(loaded, TARGET_KEYS, "target")
                present = ", ".join(loaded.files) or "none"
            if x is None:
                raise DistTrainError(f"{path} holds the arrays {present}; name the inputs "
                                     f"{' or '.join(INPUT_KEYS)} (and the targets {' or '.join(TARGET_KEYS)})")
    except DistTrainError:
        raise
    except Exception as exc:  # not NumPy's format, or objects that would need unpickling
        raise DistTrainError(f"{path} is not a readable .npy/.npz of numbers ({type(exc).__name__}: {exc})") from None
    if x.dtype.kind not in "iubf":
        raise DistTrainError(f"{path}: inputs of dtype {x.dtype} are not numbers")
    if tuple(x.shape) == tuple(spec.inputs.shape):
        x = x[None]  # one sample
    check_inputs(x.shape, spec, str(path))
    y = None
    if targets:
        if y_raw is None:
            raise DistTrainError(f"{path} holds inputs only; evaluation needs targets too: an .npz holding "
                                 f"x and y (or {', '.join(TARGET_KEYS[2:])})")
        if len(y_raw) != len(x):
            raise DistTrainError(f"{path}: {len(x)} inputs but {len(y_raw)} targets")
        y = class_targets(y_raw, spec, str(path), lambda i: f"sample {i}")
    return _arrays(x, y, [str(i) for i in range(len(x))], str(path))


def shard_samples(root: Path, spec: Any, split: str, targets: bool) -> Samples:
    from dist_train.data.shards import SPLITS, iter_blocks, load_manifest

    if split not in SPLITS:
        raise DistTrainError(f"--split {split!r} is not one of {', '.join(SPLITS)}")
    manifest = load_manifest(root)
    if tuple(manifest.input_shape) != tuple(spec.inputs.shape):
        raise DistTrainError(f"{root}: samples of shape {manifest.input_shape} do not fit the model, which takes "
                             f"{tuple(spec.inputs.shape)}")
    if targets and manifest.task != spec.task:
        raise DistTrainError(f"{root} holds {manifest.task} data; the model does {spec.task}")
    if (targets and spec.class_names and manifest.class_names
            and tuple(manifest.class_names) != tuple(spec.class_names)):
        raise DistTrainError(f"{root}: its classes ({', '.join(manifest.class_names)}) are not the model's "
                             f"({', '.join(spec.class_names)})")
    blocks = [b for info in manifest.splits[split] for b in iter_blocks(root / info.file)]
    x = np.concatenate([b[0] for b in blocks])
    y = np.concatenate([b[1] for b in blocks]) if targets else None
    if y is not None:
        y = class_targets(y, spec, f"{root} ({split})", lambda i: f"sample {i}")
    return _arrays(x, y, [str(i) for i in range(len(x))], f"{root} ({split} split)")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def image_size_of(spec: Any) -> tuple[tuple[int, int], str]:
    """The size and colour images are brought to for this model, as `prepare
    imagefolder` did when it was trained; refused for a model not trained on images."""
    source, shape = spec.inputs.source, tuple(spec.inputs.shape)
    if source.get("image_size"):
        return tuple(source["image_size"]), source.get("color", "rgb")  # type: ignore[return-value]
    is_image = (len(shape) == 3 and shape[0] in (1, 3) and spec.inputs.dtype == "uint8"
                and (source.get("name") in IMAGE_SOURCES or source.get("source") in IMAGE_SOURCES))
    if not is_image:
        raise DistTrainError(f"this model was trained on {source.get('name', 'data')} samples of shape {shape} "
                             f"({spec.inputs.dtype}), not on images; give .npy/.npz arrays of that shape")
    return (shape[1], shape[2]), "grey" if shape[0] == 1 else "rgb"


def image_samples(paths: list[Path], spec: Any, targets: bool) -> Samples:
    """Image files and folders: every PNG or JPEG file (folders searched to any
    depth, in sorted order; hidden ones skipped; any other file refused). For
    evaluation one folder of class folders, ROOT/<class name>/<image>, whose
    names are the model's class names (or class indices)."""
    from dist_train.data.image_folder import decode_image, list_images

    size, color = image_size_of(spec)
    labels: list[int] | None = None
    if targets:
        if len(paths) != 1 or not paths[0].is_dir():
            raise DistTrainError("evaluating on images needs one folder of class folders, ROOT/<class name>/<image>")
        classes, found = list_images(paths[0])
        mapped = class_targets(np.array(classes, dtype=str) if spec.class_names else _as_indices(classes, paths[0]),
                               spec, f"the class folders of {paths[0]}", lambda i: f"folder {classes[i]!r}")
        files = [p for p, _ in found]
        labels = [int(mapped[c]) for _, c in found]
    else:
        files = []
        for path in paths:
            files += image_files(path) if path.is_dir() else [path]
        if not files:
            raise DistTrainError(f"no PNG or JPEG images in {', '.join(map(str, paths))}")

    def fetch(lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = torch.from_numpy(np.stack([decode_image(f, size, color) for f in files[lo:hi]]))
        return x, None if labels is None else torch.tensor(labels[lo:hi], dtype=torch.int64)

    return Samples(len(files), [str(f) for f in files], fetch, labels is not None,
                   f"{len(files)} images under {', '.join(map(str, paths))}")


def _as_indices(classes: tuple[str, ...], root: Path) -> np.ndarray:
    if not all(c.isdigit() for c in classes):
        raise DistTrainError(f"the class folders of {root} ({', '.join(classes)}) must be the model's class indices, "
                             "since its classes have no names")
    return np.array([int(c) for c in classes], dtype=np.int64)


def image_files(root: Path) -> list[Path]:
    """Every PNG or JPEG under `root`, sorted by path; hidden files and
    folders skipped; any other file refused by name."""
    import os

    found = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in names:
            if name.startswith("."):
                continue
            path = Path(directory) / name
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise DistTrainError(f"{path} is not a PNG or JPEG image; move it out of {root}")
            found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


# ------------------------------------------------------------ the run's own data

def run_split(spec: Any, split: str) -> Samples:
    """The split of the data the run trained on, raw: built-in sets drawn and
    split again, its shards, or its custom dataset."""
    from dist_train.config import DataConfig, build_section

    record = dict(spec.data)
    if record.get("source") in (None, "python"):
        raise DistTrainError("this model's run was given its data in Python (dist_train.fit(data=...)), so its "
                             "splits cannot be found again; pass the data to evaluate on")
    cfg = build_section(DataConfig, record, "data.")
    if cfg.source == "shards":
        return shard_samples(Path(cfg.path), spec, split, True)
    if cfg.source == "custom":
        from dist_train.data.custom import make_splits

        chosen = dict(zip(("train", "val", "test"), make_splits(cfg)))[split]
        return dataset_samples(chosen, spec, f"the {split} split of {cfg.class_path}")
    from dist_train.data.sources import raw_split

    x, y = raw_split(cfg, split)
    return _arrays(x, class_targets(y, spec, f"the {split} split", lambda i: f"sample {i}"),
                   [str(i) for i in range(len(x))], f"the {split} split of {cfg.source}")
