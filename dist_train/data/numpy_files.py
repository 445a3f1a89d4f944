"""`dist-train prepare arrays`: inputs and targets from NumPy `.npy` / `.npz`
files. Read with allow_pickle=False always: a file holding Python objects is
refused, never unpickled."""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dist_train.data.targets import Targets, array_targets
from dist_train.errors import DistTrainError

# Keys tried in an .npz when --inputs-key / --targets-key is not given.
INPUT_KEYS = ("x", "X", "inputs")
TARGET_KEYS = ("y", "Y", "targets", "labels")
_NPY_MAGIC, _ZIP_MAGIC = b"\x93NUMPY", b"PK\x03\x04"


@dataclass(frozen=True)
class Arrays:
    inputs: np.ndarray  # uint8 as stored, every other numeric dtype as float32; (N, ...)
    targets: Targets
    source: dict


def read_array(path: Path, key: str | None, defaults: tuple[str, ...], option: str) -> tuple[np.ndarray, str | None]:
    """The array in a .npy file, or the one named `key` (else the one default
    key present) in an .npz; and the key used. `option` is the command-line
    option the file came from, for the messages."""
    path = Path(path)
    if not path.is_file():
        raise DistTrainError(f"{option} {path}: no such file")
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if not magic.startswith((_NPY_MAGIC, _ZIP_MAGIC)):
        raise DistTrainError(f"{option} {path} is neither a .npy nor a .npz file (no NumPy or zip header); "
                             "save the arrays with numpy.save or numpy.savez")
    try:
        if magic.startswith(_NPY_MAGIC):
            if key is not None:
                raise DistTrainError(f"{option}-key {key!r} names an array inside an .npz, but {path} is a .npy file "
                                     f"holding one array; drop {option}-key")
            return np.load(path, allow_pickle=False), None
        with np.load(path, allow_pickle=False) as npz:
            present = list(npz.files)
            if key is None:
                found = [k for k in defaults if k in present]
                if len(found) != 1:
                    what = "none" if not found else f"several ({', '.join(found)})"
                    raise DistTrainError(f"{path} holds the arrays {', '.join(present) or '(none)'}; of the default "
                                         f"names {', '.join(defaults)} it has {what}: choose one with {option}-key KEY")
                key = found[0]
            elif key not in present:
                raise DistTrainError(f"{option}-key {key!r} is not in {path}; it holds: "
                                     f"{', '.join(present) or '(none)'}")
            return npz[key], key
    except DistTrainError:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise DistTrainError(f"{path} holds Python objects (a pickled array), which are never unpickled; "
                                 "save a plain numeric array (e.g. x.astype(numpy.float32)) instead") from None
        raise DistTrainError(f"cannot read {path} ({exc}); the file is truncated or corrupt") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DistTrainError(f"cannot read {path} ({type(exc).__name__}: {exc}); the file is truncated or "
                             "corrupt") from None


def load_arrays(inputs_path: Path, targets_path: Path | None, inputs_key: str | None, targets_key: str | None,
                task: str) -> Arrays:
    """Inputs (N, ...) and targets (N,) or (N, K). Without `targets_path` the
    targets come from the inputs' .npz."""
    problems = []  # both files are read before either is refused, so one run names what is wrong with both
    try:
        inputs, used_inputs_key = read_array(inputs_path, inputs_key, INPUT_KEYS, "--inputs")
        if targets_path is None and used_inputs_key is None:
            raise DistTrainError(f"--inputs {inputs_path} is a .npy file holding only the inputs; give the targets "
                                 "with --targets FILE (.npy or .npz)")
    except DistTrainError as exc:
        problems.append(str(exc))
    targets_file = Path(targets_path) if targets_path is not None else Path(inputs_path)
    if targets_path is not None or not problems:
        try:
            targets, used_targets_key = read_array(targets_file, targets_key, TARGET_KEYS, "--targets")
        except DistTrainError as exc:
            problems.append(str(exc))
    if len(problems) > 1:
        raise DistTrainError(f"neither file can be used: {'; and '.join(problems)}")
    if problems:
        raise DistTrainError(problems[0])
    where_x = f"{inputs_path}" + (f" [{used_inputs_key}]" if used_inputs_key else "")
    where_y = f"{targets_file}" + (f" [{used_targets_key}]" if used_targets_key else "")
    if inputs.ndim < 2:
        raise DistTrainError(f"{where_x}: inputs must have shape (N, ...) with the features of one sample after "
                             f"the first axis, got {inputs.shape}; for one feature per sample save x.reshape(-1, 1)")
    if inputs.dtype.kind not in "biuf":
        raise DistTrainError(f"{where_x}: inputs of dtype {inputs.dtype} are not real numbers; save a numeric array")
    if targets.ndim == 0 or len(targets) != len(inputs):
        raise DistTrainError(f"{where_x} holds {len(inputs)} samples but {where_y} holds targets of shape "
                             f"{targets.shape}; they must pair up sample by sample")
    if inputs.dtype != np.uint8:  # uint8 (pixels) is stored as it is; everything else as float32
        inputs = inputs.astype(np.float32)
        bad = np.flatnonzero(~np.isfinite(inputs).reshape(len(inputs), -1).all(axis=1))
        if len(bad):
            raise DistTrainError(f"{where_x}: sample {bad[0]} holds a value that is not a finite number (NaN, "
                                 "infinite or beyond float32); fix or drop that sample")
    source = {"source": "arrays", "inputs": str(inputs_path), "inputs_key": used_inputs_key,
              "targets": str(targets_file), "targets_key": used_targets_key}
    return Arrays(inputs, array_targets(targets, task, where_y), source)
