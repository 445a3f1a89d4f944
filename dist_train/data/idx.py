"""Reader for the IDX format of MNIST and Fashion-MNIST (gzip or not)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from dist_train.errors import DistTrainError, name_some

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
           0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: Path) -> np.ndarray:
    """The array stored in one IDX file. Header: two zero bytes, a type code, the
    number of dimensions, then one big-endian uint32 per dimension."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise DistTrainError(f"cannot read IDX file {path}: {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise DistTrainError(f"{path} is not an IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise DistTrainError(f"{path}: header says shape {shape} ({expected} bytes of data) but the file holds "
                             f"{len(data) - header}: it is truncated or corrupt")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def find_idx(directory: Path, stem: str) -> Path | None:
    """`stem`[.gz] in `directory` (or the stem spelled with ".idx"), else None."""
    candidates = [directory / stem, directory / f"{stem}.gz", directory / stem.replace("-idx", ".idx")]
    return next((p for p in candidates if p.is_file()), None)


def load_idx_splits(directory: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The images and labels of "train" and "t10k" (the names MNIST and
    Fashion-MNIST use) in `directory`. Every missing, unreadable or mismatched
    file of the four is named in one error, so one run finds them all."""
    directory = Path(directory)
    problems, arrays, missing = [], {}, False
    for prefix in ("train", "t10k"):
        for kind, dims in (("images", 3), ("labels", 1)):
            stem = f"{prefix}-{kind}-idx{dims}-ubyte"
            path = find_idx(directory, stem)
            if path is None:
                problems.append(f"no {stem}[.gz] in {directory}")
                missing = True
                continue
            try:
                arrays[prefix, kind] = path, read_idx(path)
            except DistTrainError as exc:
                problems.append(str(exc))
        if (prefix, "images") in arrays and (prefix, "labels") in arrays:
            (images_path, images), (labels_path, labels) = arrays[prefix, "images"], arrays[prefix, "labels"]
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                problems.append(f"{images_path} ({images.shape}) and {labels_path} ({labels.shape}) do not pair up "
                                "as N images and N labels")
    hint = ("expected the MNIST file names (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-...)"
            if missing else "")
    if len(problems) == 1:
        raise DistTrainError(problems[0] + (f"; {hint}" if hint else ""))
    if problems:
        raise DistTrainError(f"{len(problems)} problems with the IDX files in {directory}: {name_some(problems)}"
                             + (f"; {hint}" if hint else "") + "; replace or add those files and run the command "
                             "again")
    return {prefix: (arrays[prefix, "images"][1], arrays[prefix, "labels"][1].astype(np.int64))
            for prefix in ("train", "t10k")}
