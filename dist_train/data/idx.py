"""Reader for the IDX format of MNIST and Fashion-MNIST (gzip or not)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from dist_train.errors import DistTrainError

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
                             f"{len(data) - header}; the file is truncated or corrupt")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def find_idx_pair(directory: Path, prefix: str) -> tuple[Path, Path]:
    """`prefix`-images-idx3-ubyte[.gz] and `prefix`-labels-idx1-ubyte[.gz] in `directory`
    (prefix "train" or "t10k", the names MNIST and Fashion-MNIST use)."""
    found = []
    for kind, dims in (("images", 3), ("labels", 1)):
        stem = f"{prefix}-{kind}-idx{dims}-ubyte"
        candidates = [directory / stem, directory / f"{stem}.gz", directory / stem.replace("-idx", ".idx")]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise DistTrainError(f"no {stem}[.gz] in {directory}; expected the MNIST file names "
                                 "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-...)")
        found.append(path)
    return found[0], found[1]


def load_idx_split(directory: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    images_path, labels_path = find_idx_pair(directory, prefix)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DistTrainError(f"{images_path} ({images.shape}) and {labels_path} ({labels.shape}) do not pair up "
                             "as N images and N labels")
    return images, labels.astype(np.int64)
