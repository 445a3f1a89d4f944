"""The on-disk shard format: webdataset tar files plus a JSON manifest.

One tar member group per *block* of up to `block_size` samples
(`<key>.inputs.npy`, `<key>.targets.npy`): reading one member per sample is
far slower than a small MLP consumes, blocks are not. The manifest records the
splits, every shard's sample count, size and SHA-256, the input shape and
dtype, the task and its classes or outputs, and the training split's
normalization statistics.

Targets are int64 class indices of shape (n,) for classification, float32 of
shape (n, *target_shape) for regression. The fields that say so ("task",
"class_names", "target_shape", "num_outputs") were added to format 1 later and
are written only when they carry something: a manifest without them is
classification without class names, as every earlier manifest is, and the
built-in sets still write byte-identical manifests.

A data set directory is written whole into a temporary directory and renamed
into place, so a crash never leaves half-written shards where a reader looks.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dist_train.data.normalization import Normalizer, normalization_stats
from dist_train.data.sampler import even_slices
from dist_train.data.sources import InputSpec
from dist_train.errors import DistTrainError, taken_from
from dist_train.tasks import CLASSIFICATION, Task

FORMAT = "dist-train-shards/1"
SPLITS = ("train", "val", "test")
FIELDS = ("inputs.npy", "targets.npy")


@dataclass(frozen=True)
class ShardInfo:
    file: str
    samples: int
    blocks: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    root: Path
    name: str
    input_shape: tuple[int, ...]
    input_dtype: str
    num_classes: int
    block_size: int
    splits: dict[str, tuple[ShardInfo, ...]]
    normalization: dict[str, dict[str, list[float]]]
    task: Task = CLASSIFICATION
    class_names: tuple[str, ...] | None = None  # index -> name, when the source named its classes
    target_shape: tuple[int, ...] = ()  # one sample's target: () for a class index or one real value, (K,) for K
    source: dict[str, Any] = field(default_factory=dict)  # where the data came from (CSV columns, image size, ...)

    def num_samples(self, split: str) -> int:
        return sum(s.samples for s in self.splits[split])

    @property
    def num_outputs(self) -> int:
        """The model's outputs: one per class, or one per regression value."""
        return self.task.num_outputs(self.num_classes, self.target_shape)

    def input_spec(self, normalizer: Normalizer) -> InputSpec:
        """The raw inputs as stored and their preprocessing, for a model bundle."""
        return InputSpec(self.input_shape, self.input_dtype, normalizer.preprocess, normalizer.mode, self.class_names,
                         {"name": self.name, **self.source})

    def expected_targets(self, n: int) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype of a block of `n` samples' targets."""
        return (n, *self.target_shape), self.task.numpy_dtype


# ------------------------------------------------------------------ writing

def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def write_dataset(out: Path, name: str, splits: dict[str, tuple[np.ndarray, np.ndarray]], num_classes: int,
                  shards: dict[str, int], block_size: int = 256, source: dict[str, Any] | None = None, *,
                  task: Task = CLASSIFICATION, class_names: tuple[str, ...] | None = None) -> Manifest:
    """Write `splits` (name -> (inputs, targets) in the order to store them) as
    shards under `out`, replacing a data set already there. Deterministic: the
    same arrays give byte-identical files. Classification stores the targets
    as int64 class indices (N,); regression as float32 (N,) or (N, K), with
    `num_classes` 0."""
    import webdataset as wds

    task = Task(task)  # ValueError for a name that is none
    target_dtype = task.numpy_dtype
    target_shape = tuple(splits["train"][1].shape[1:])
    for split, (_, targets) in splits.items():
        if tuple(targets.shape[1:]) != target_shape or (task.classifies and target_shape):
            raise ValueError(f"{split}: targets of shape {targets.shape} do not fit task {task} "
                             f"(train targets {splits['train'][1].shape})")
    if class_names is not None and (not task.classifies or len(class_names) != num_classes):
        raise ValueError(f"{len(class_names)} class names for task {task} with {num_classes} classes")
    out = Path(out)
    if out.exists() and not (out / "manifest.json").is_file() and any(out.iterdir()):
        raise DistTrainError(f"{out} exists and is not a prepared data set (no manifest.json); "
                             "choose another --out so nothing there is overwritten")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        entries: dict[str, list[dict]] = {}
        input_shape = None
        for split, (inputs, targets) in splits.items():
            if len(inputs) != len(targets):
                raise ValueError(f"{split}: {len(inputs)} inputs but {len(targets)} targets")
            input_shape = tuple(inputs.shape[1:])
            entries[split] = []
            for index, (lo, hi) in enumerate(even_slices(len(targets), shards[split])):
                path = tmp / f"{split}-{index:05d}.tar"
                blocks = 0
                with open(path, "wb") as fh:
                    with wds.TarWriter(fh, encoder=False, mtime=0.0, user="", group="") as writer:
                        for start in range(lo, hi, block_size):
                            end = min(start + block_size, hi)
                            writer.write({"__key__": f"{split}-{index:05d}-{blocks:06d}",
                                          "inputs.npy": _npy_bytes(inputs[start:end]),
                                          "targets.npy": _npy_bytes(targets[start:end].astype(target_dtype))})
                            blocks += 1
                    fh.flush()
                    os.fsync(fh.fileno())
                data = path.read_bytes()
                entries[split].append({"file": path.name, "samples": hi - lo, "blocks": blocks,
                                       "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        manifest = {"format": FORMAT, "name": name, "input_shape": list(input_shape or ()),
                    "input_dtype": str(splits["train"][0].dtype), **_task_fields(task, num_classes, class_names,
                                                                                  target_shape),
                    "block_size": block_size, "normalization": normalization_stats(splits["train"][0]),
                    "source": source or {}, "splits": {s: {"samples": sum(e["samples"] for e in v), "shards": v}
                                                       for s, v in entries.items()}}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_manifest(out)


def _task_fields(task: Task, num_classes: int, class_names: tuple[str, ...] | None,
                 target_shape: tuple[int, ...]) -> dict[str, Any]:
    """The manifest's task fields. Plain classification writes only num_classes,
    exactly as before these fields existed."""
    if not task.classifies:
        return {"task": task.value, "num_classes": 0, "target_shape": list(target_shape),
                "num_outputs": task.num_outputs(0, target_shape)}
    if class_names is not None:
        return {"task": task.value, "num_classes": num_classes, "class_names": list(class_names)}
    return {"num_classes": num_classes}


def _swap_into_place(tmp: Path, out: Path) -> None:
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old)
    else:
        os.rename(tmp, out)


# ------------------------------------------------------------------ reading

def load_manifest(root: Path) -> Manifest:
    root = Path(root)
    if not root.is_dir():
        raise DistTrainError(f"data.path {str(root)!r}{taken_from(root)} is not a directory; prepare a data set there with "
                             f"`dist-train prepare NAME --out {root}` (`dist-train prepare --help` lists the NAMEs), or point data.path at one")
    path = root / "manifest.json"
    if not path.is_file():
        raise DistTrainError(f"data.path {str(root)!r}{taken_from(root)} has no manifest.json, so it is not a prepared data set; prepare "
                             f"one with `dist-train prepare NAME --out DIR` and point data.path at it")
    try:
        raw = json.loads(path.read_text())
        if raw.get("format") != FORMAT:
            raise DistTrainError(f"{path}: format {raw.get('format')!r}, expected {FORMAT!r}; prepare the data again")
        task = Task(raw.get("task", CLASSIFICATION.value))  # ValueError: a manifest that is not ours
        class_names = raw.get("class_names")
        if class_names is not None and len(class_names) != int(raw["num_classes"]):
            raise ValueError(f"{len(class_names)} class_names for num_classes {raw['num_classes']}")
        return Manifest(
            root=root, name=raw["name"], input_shape=tuple(raw["input_shape"]), input_dtype=raw["input_dtype"],
            num_classes=int(raw["num_classes"]), block_size=int(raw["block_size"]),
            splits={s: tuple(ShardInfo(**e) for e in raw["splits"][s]["shards"]) for s in SPLITS},
            normalization=raw["normalization"], task=task,
            class_names=tuple(str(c) for c in class_names) if class_names is not None else None,
            target_shape=tuple(int(d) for d in raw.get("target_shape", ())), source=dict(raw.get("source") or {}))
    except (ValueError, KeyError, TypeError) as exc:
        raise DistTrainError(f"{path} is not a valid manifest ({type(exc).__name__}: {exc}); prepare the data again") from None


def iter_blocks(path: Path, stream: Any = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(inputs, targets) of each block of one shard, in file order, read with
    webdataset's tar reader. Raises DistTrainError naming the file on a broken
    tar or a block missing a field."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    try:
        if stream is None:
            stream = open(path, "rb")
        with stream:
            for sample in group_by_keys(tar_file_expander([{"url": str(path), "stream": stream}])):
                missing = [f for f in FIELDS if f not in sample]
                if missing:
                    raise DistTrainError(f"shard {path}: block {sample.get('__key__')!r} has no {', '.join(missing)} "
                                         "field; the shard was not written by `dist-train prepare`")
                yield (np.load(io.BytesIO(sample["inputs.npy"]), allow_pickle=False),
                       np.load(io.BytesIO(sample["targets.npy"]), allow_pickle=False))
    except DistTrainError:
        raise
    except FileNotFoundError:
        raise DistTrainError(f"shard {path} is missing; prepare the data again") from None
    except Exception as exc:  # tarfile/numpy errors on corrupt or truncated files
        raise DistTrainError(f"shard {path} is corrupt or truncated ({type(exc).__name__}: {exc}); "
                             "prepare the data again") from None


def verify_shard(manifest: Manifest, info: ShardInfo) -> list[str]:
    """Everything wrong with one shard compared with its manifest entry."""
    path = manifest.root / info.file
    if not path.is_file():
        return [f"shard {path} is missing"]
    data = path.read_bytes()
    problems = []
    if len(data) != info.bytes:
        problems.append(f"shard {path} has {len(data)} bytes, the manifest says {info.bytes} (truncated or replaced)")
    elif hashlib.sha256(data).hexdigest() != info.sha256:
        problems.append(f"shard {path} does not match its SHA-256 in the manifest (corrupt or replaced)")
    samples = blocks = 0
    try:
        for inputs, targets in iter_blocks(path, io.BytesIO(data)):
            blocks += 1
            samples += len(targets)
            target_shape, target_dtype = manifest.expected_targets(len(inputs))
            if (tuple(inputs.shape[1:]) != manifest.input_shape or targets.shape != target_shape
                    or targets.dtype != target_dtype):
                problems.append(f"shard {path}: block {blocks} has inputs {inputs.shape} and targets {targets.shape} "
                                f"{targets.dtype}, expected {_shape('n', manifest.input_shape)} and "
                                f"{_shape('n', manifest.target_shape)} {target_dtype} ({manifest.task})")
                break
    except DistTrainError as exc:
        problems.append(str(exc))
        return problems
    if samples != info.samples or blocks != info.blocks:
        problems.append(f"shard {path} holds {samples} samples in {blocks} blocks, the manifest says "
                        f"{info.samples} in {info.blocks}")
    return problems


def _shape(first: str, rest: tuple[int, ...]) -> str:
    return f"({', '.join([first, *map(str, rest)])}{',' if not rest else ''})"
