"""Predicting and evaluating with a trained model, in one process or many.

The samples are cut into global batches of `batch_size` in input order, the
same whatever the number of workers, and rank r takes the r-th contiguous
run of them: every sample is predicted once, by the same computation (batch
for batch) as in one process, and the outputs are gathered in input order, so
N workers write byte for byte the file one process writes. Evaluation keeps
float64 sums per rank and all-reduces them once: exact, as the validation
metrics are.

    import dist_train
    model = dist_train.load_model("model.pt")
    found = dist_train.predict(model, "new.csv")            # or an array, a dataset, images, shards
    found.classes, found.probabilities, found.write("predictions.csv")
    dist_train.evaluate(model)                               # the run's own test split, or data=...
"""

from __future__ import annotations

import contextlib
import csv
import io
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dist_train.comm import Comm
from dist_train.data.inputs import Samples, array_samples, dataset_samples, open_samples, run_split
from dist_train.data.loader import Batch
from dist_train.data.sampler import even_slices
from dist_train.env import DistEnv
from dist_train.errors import DistTrainError
from dist_train.predictor import Predictor, probabilities
from dist_train.tasks import Task

BATCH_SIZE = 1024
OUTPUT_SUFFIXES = (".csv", ".npz")


@dataclass(frozen=True)
class Predictions:
    """What a model said about each sample, in input order."""

    names: list[str]  # each sample: a file, a CSV line, an index
    outputs: np.ndarray  # (N, num_outputs) float32: the network's outputs
    task: Task
    loss: str
    class_names: tuple[str, ...] | None = None
    target_shape: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", Task(self.task))  # a Task, or its name

    @property
    def probabilities(self) -> np.ndarray:
        if not self.task.classifies:
            raise DistTrainError("probabilities are for classifiers; this model predicts values")
        return probabilities(torch.from_numpy(self.outputs), self.loss).numpy()

    @property
    def classes(self) -> np.ndarray:
        if not self.task.classifies:
            raise DistTrainError("classes are for classifiers; this model predicts values")
        return self.outputs.argmax(axis=1)

    @property
    def values(self) -> np.ndarray:
        """Regression: the predicted values, in the targets' shape."""
        return self.outputs.reshape(len(self.outputs), *self.target_shape)

    def class_name(self, index: int) -> str:
        return self.class_names[index] if self.class_names else str(index)

    def write(self, path: str | Path, top_k: int = 1) -> Path:
        """A CSV (a row per sample: `row`, `sample`, then `class`, `class_name`,
        `probability`, repeated with suffixes _2 .. _K for the `top_k` most
        probable classes; regression: `value` or `value_0` ...) or an .npz
        (`outputs`, `samples`, and `classes`, `probabilities`, `class_names`,
        or `values`), written atomically."""
        from dist_train.atomic import atomic_file

        path = Path(path)
        check_output(path)
        with atomic_file(path, "wb") as fh:
            fh.write(self._npz() if path.suffix.lower() == ".npz" else self._csv(top_k).encode())
        return path

    def _csv(self, top_k: int) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        if self.task.classifies:
            k = max(1, min(top_k, self.outputs.shape[1]))
            probs = self.probabilities
            # by probability, ties by class index (a stable sort: the same order on every machine)
            order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
            suffixes = [""] + [f"_{i}" for i in range(2, k + 1)]
            writer.writerow(["row", "sample"] + [f"{c}{s}" for s in suffixes
                                                 for c in ("class", "class_name", "probability")])
            for i, name in enumerate(self.names):
                cells: list[Any] = [i, name]
                for c in order[i]:
                    cells += [int(c), self.class_name(int(c)), str(probs[i, c])]  # float32's shortest repr
                writer.writerow(cells)
        else:
            values = self.outputs.reshape(len(self.outputs), -1)
            columns = ["value"] if values.shape[1] == 1 else [f"value_{j}" for j in range(values.shape[1])]
            writer.writerow(["row", "sample", *columns])
            for i, name in enumerate(self.names):
                writer.writerow([i, name, *(str(v) for v in values[i])])
        return buffer.getvalue()

    def _npz(self) -> bytes:
        arrays: dict[str, np.ndarray] = {"outputs": self.outputs, "samples": np.array(self.names, dtype=str)}
        if self.task.classifies:
            arrays.update(classes=self.classes, probabilities=self.probabilities)
            if self.class_names:
                arrays["class_names"] = np.array(self.class_names, dtype=str)
        else:
            arrays["values"] = self.values
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()


def check_output(path: Path) -> None:
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise DistTrainError(f"--out {path}: predictions are written as .csv or .npz; name the file so")
    if not path.parent.is_dir():
        raise DistTrainError(f"--out {path}: the directory {path.parent} does not exist")


# ------------------------------------------------------------ the distributed loop

def my_batches(count: int, batch_size: int, env: DistEnv) -> list[tuple[int, int]]:
    """This rank's contiguous run of the global batches [lo, hi) of the input."""
    bounds = [(lo, min(lo + batch_size, count)) for lo in range(0, count, batch_size)]
    first, last = even_slices(len(bounds), env.world_size)[env.rank]
    return bounds[first:last]


def _progress(total: int, show: bool) -> Any:
    if not show:
        return contextlib.nullcontext(None)
    from tqdm import tqdm

    return tqdm(total=total, unit="sample", dynamic_ncols=True, leave=False)


def predict_outputs(model: Predictor, samples: Samples, env: DistEnv, comm: Comm, batch_size: int = BATCH_SIZE,
                    progress: bool = False) -> np.ndarray:
    """The network's outputs for every sample, in input order, on every rank."""
    model = model.to(env.device).eval()
    outputs = []
    mine = my_batches(samples.count, batch_size, env)
    error = None
    with _progress(sum(hi - lo for lo, hi in mine), progress and env.is_rank0 and sys.stderr.isatty()) as bar:
        try:
            with torch.no_grad():
                for lo, hi in mine:
                    x, _ = samples.fetch(lo, hi)
                    outputs.append(model(x.to(env.device)).float().cpu().numpy())
                    if bar is not None:
                        bar.update(hi - lo)
        except DistTrainError as exc:  # an image that does not decode, ...: every rank stops with it
            error = exc
    comm.raise_together(error)
    found = np.concatenate(outputs) if outputs else np.zeros((0, model.spec.num_outputs), dtype=np.float32)
    return np.concatenate(comm.gather_object(found)) if comm.world_size > 1 else found


def evaluate_samples(model: Predictor, samples: Samples, env: DistEnv, comm: Comm, batch_size: int = BATCH_SIZE,
                     top_k: int = 5) -> dict[str, Any]:
    """The run's metrics (the loss it trained with, accuracy or MSE, MAE and
    R^2) and, for classes, top-k, log loss, precision, recall, F1 and the
    confusion matrix, over every sample: exact across ranks."""
    from dist_train.losses import build_loss
    from dist_train.metrics import Detail, local_sums, reduce_sums

    if not samples.has_targets:
        raise DistTrainError(f"{samples.what} has no targets to evaluate against")
    model = model.to(env.device).eval()
    spec = model.spec

    def batches() -> Iterator[Batch]:
        for lo, hi in my_batches(samples.count, batch_size, env):
            x, y = samples.fetch(lo, hi)
            yield Batch(x.to(env.device), y.to(env.device))

    detail = Detail(spec.num_outputs, top_k, spec.loss, spec.class_names) if spec.task.classifies else None
    sums, error = None, None
    try:
        sums = local_sums(model, batches(), build_loss(spec.loss, spec.task), env.device, spec.task,
                          spec.num_outputs, detail)
    except DistTrainError as exc:  # every rank stops with it, none waits in the reduction
        error = exc
    comm.raise_together(error)
    return reduce_sums(sums, comm, spec.task, detail)


# ------------------------------------------------------------ the Python API

def samples_of(model: Predictor, inputs: Any, split: str, targets: bool) -> Samples:
    """Samples from whatever was given: None (the run's own split), files,
    arrays or tensors, or a map-style dataset."""
    if inputs is None:
        return run_split(model.spec, split)
    if isinstance(inputs, (str, Path)):
        return open_samples([inputs], model.spec, split, targets)
    if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(i, (str, Path)) for i in inputs):
        return open_samples(list(inputs), model.spec, split, targets)
    if isinstance(inputs, (list, tuple)) and len(inputs) == 2 and targets:  # (inputs, targets)
        return array_samples(inputs[0], inputs[1], model.spec)
    if isinstance(inputs, (np.ndarray, torch.Tensor)):
        if targets:
            raise DistTrainError("evaluation needs targets: pass (inputs, targets), a dataset, or a file")
        return array_samples(inputs, None, model.spec)
    if hasattr(inputs, "__getitem__") and hasattr(inputs, "__len__"):
        return dataset_samples(inputs, model.spec)
    raise DistTrainError(f"cannot read samples from a {type(inputs).__name__}: give a path (CSV, .npy/.npz, images, "
                         "prepared shards), an array or tensor, or a map-style dataset")


@contextlib.contextmanager
def _job(device: str = "auto") -> Iterator[tuple[DistEnv, Comm]]:
    """This process's place in the job (a launcher's environment, or one
    process), with a process group for as long as it is needed."""
    from dist_train.distributed import process_group

    env = DistEnv.from_env(device=device)
    with process_group(env, 300.0):
        yield env, Comm.of(env)


def _model(model: Any, allow_changed_code: bool) -> Predictor:
    if isinstance(model, Predictor):
        return model
    if isinstance(model, (str, Path)):
        from dist_train.bundle import load_model

        return load_model(model, allow_changed_code=allow_changed_code)
    raise DistTrainError(f"model must be a Predictor (dist_train.load_model) or a path, not a {type(model).__name__}")


def predict(model: Predictor | str | Path, inputs: Any, *, out: str | Path | None = None, top_k: int = 1,
            split: str = "test", batch_size: int = BATCH_SIZE, device: str = "auto",
            allow_changed_code: bool = False) -> Predictions:
    """What `model` (a Predictor, a bundle, or a run directory) says about
    `inputs` (a path: CSV, .npy/.npz, images or a folder of them, prepared
    shards and `split`; an array or tensor; a map-style dataset). `out`: also
    write them (.csv or .npz; rank 0). Under a launcher, each worker predicts
    its share and every one returns all of them."""
    predictor = _model(model, allow_changed_code)
    if out is not None:
        check_output(Path(out))
    samples = samples_of(predictor, inputs, split, targets=False)
    with _job(device) as (env, comm):
        outputs = predict_outputs(predictor, samples, env, comm, batch_size)
        spec = predictor.spec
        found = Predictions(samples.names, outputs, spec.task, spec.loss, spec.class_names, spec.target_shape)
        if out is not None and env.is_rank0:
            found.write(out, top_k)
        comm.barrier()
    return found


def evaluate(model: Predictor | str | Path, data: Any = None, *, split: str = "test", top_k: int = 5,
             batch_size: int = BATCH_SIZE, device: str = "auto", allow_changed_code: bool = False) -> dict[str, Any]:
    """The metrics of `model` on `data`: by default the split `split` of the
    data its run trained on; else a path (as for predict, with targets), a
    pair (inputs, targets), or a map-style dataset."""
    predictor = _model(model, allow_changed_code)
    samples = samples_of(predictor, data, split, targets=True)
    with _job(device) as (env, comm):
        return evaluate_samples(predictor, samples, env, comm, batch_size, top_k)
