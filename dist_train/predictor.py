"""A trained network that takes raw inputs: the network, the preprocessing
training applied to its inputs, and what its outputs mean.

`PredictorSpec` is everything a prediction needs besides the weights: the
network's recipe (a built-in model and its settings, or a `class_path` with
its `init_args` and a digest of the user's file), one raw input's shape and
dtype, the normalization statistics as tensors, the task (class names, or the
number of regression outputs) and the loss (which says how outputs become
probabilities). Every checkpoint holds it (`predictor.pt`), so a model bundle
can be made from any checkpoint (dist_train.bundle), and `Predictor` puts it
around the network: `Predictor(raw inputs)` is the network's outputs on the
preprocessed inputs, exactly as training computed them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dist_train.config import ModelConfig, to_dict
from dist_train.data.normalization import Preprocess
from dist_train.data.sources import InputSpec
from dist_train.errors import DistTrainError
from dist_train.resume_changes import check_normalize
from dist_train.tasks import Task

FORMAT = "dist-train-predictor/1"


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def code_file(class_path: str) -> Path | None:
    """The Python file a class_path's code lives in (None: not a file, e.g. a
    compiled or namespace module)."""
    if ":" in class_path:
        return Path(class_path.rsplit(":", 1)[0])
    module = class_path.rpartition(".")[0]
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    origin = spec.origin if spec is not None else None
    return Path(origin) if origin and origin.endswith(".py") else None


def config_recipe(model: ModelConfig) -> dict[str, Any]:
    """How to build the network again: the model's config section (a built-in
    network's settings, or a class_path and its init_args) and, for a user's
    code, the SHA-256 of the file it lives in."""
    recipe: dict[str, Any] = {"kind": "config", "model": to_dict(model), "files": {}}
    if model.class_path:
        path = code_file(model.class_path)
        if path is not None and path.is_file():
            recipe["files"][str(path)] = file_digest(path)
    return recipe


def object_recipe(model: Any) -> dict[str, Any]:
    """The recipe of a model handed to `dist_train.fit` as a function or an
    nn.Module: a module-level function (or class) becomes a class_path (called
    again with the input shape and classes it asks for); anything else is
    recorded by name only, and loading it needs the network passed in."""
    target = model if not isinstance(model, nn.Module) else type(model)
    name = getattr(target, "__qualname__", type(target).__name__)
    module = getattr(target, "__module__", None)
    where = None
    if "<" not in name and module:  # not a lambda, nor defined inside a function
        if module == "__main__" or importlib.util.find_spec(module) is None:
            try:
                where = f"{Path(inspect.getfile(target)).resolve()}:{name}"
            except (TypeError, OSError):
                where = None
        else:
            where = f"{module}.{name}"
    if where is None:
        return {"kind": "object", "name": f"{module}.{name}", "files": {}}
    recipe = config_recipe(ModelConfig(class_path=where))
    recipe["kind"] = "config" if not isinstance(model, nn.Module) else "object"
    recipe["name"] = where
    return recipe


@dataclass(frozen=True)
class PredictorSpec:
    recipe: dict[str, Any]
    inputs: InputSpec
    task: Task
    num_outputs: int  # scores per sample (classes) or regression values
    loss: str  # train.loss: softmax or sigmoid probabilities
    target_shape: tuple[int, ...] = ()
    data: dict[str, Any] = field(default_factory=dict)  # the run's data config: what `evaluate` reads by default

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", Task(self.task))  # a Task, or its name

    @property
    def class_names(self) -> tuple[str, ...] | None:
        return self.inputs.class_names

    # a checkpoint part (predictor.pt): written with every checkpoint, never
    # read back into a run (it is rebuilt from the data at every start); on a
    # resume its record of the normalization the run used is compared with
    # the one this run resolved (data.normalize: auto is decided by the data)
    def state_dict(self) -> dict[str, Any]:
        p = self.inputs.preprocess
        return {"format": FORMAT, "recipe": self.recipe, "task": self.task.value, "num_outputs": self.num_outputs,
                "loss": self.loss, "target_shape": list(self.target_shape), "data": self.data,
                "inputs": {"shape": list(self.inputs.shape), "dtype": self.inputs.dtype,
                           "normalize": self.inputs.normalize, "mean": p.mean, "inv_std": p.inv_std,
                           "class_names": list(self.inputs.class_names) if self.inputs.class_names else None,
                           "source": self.inputs.source}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        recorded = (state.get("inputs") or {}).get("normalize") if isinstance(state, dict) else None
        if recorded is not None:
            check_normalize(recorded, self.inputs.normalize)

    @classmethod
    def from_state(cls, state: dict[str, Any], where: str) -> "PredictorSpec":
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise DistTrainError(f"{where} holds a model description of format {found!r}, which this dist-train "
                                 f"does not read (it reads {FORMAT!r}); use the dist-train version that wrote it")
        i = state["inputs"]
        names = tuple(i["class_names"]) if i.get("class_names") else None
        inputs = InputSpec(tuple(i["shape"]), i["dtype"], Preprocess(i["mean"], i["inv_std"]), i["normalize"],
                           names, dict(i.get("source") or {}))
        task = Task.of(state["task"], f"{where}: task")
        return cls(state["recipe"], inputs, task, int(state["num_outputs"]), state["loss"],
                   tuple(state.get("target_shape") or ()), dict(state.get("data") or {}))


def spec_for(recipe: dict[str, Any], data: Any, loss: str, data_config: dict[str, Any]) -> PredictorSpec:
    """The spec of a run's network trained on `data` (a TrainData)."""
    return PredictorSpec(recipe, data.input_spec, data.task, data.num_outputs, loss, tuple(data.target_shape),
                         data_config)


def probabilities(outputs: torch.Tensor, loss: str) -> torch.Tensor:
    """Class probabilities from a classifier's outputs: softmax, or a sigmoid per
    class for a network trained with binary cross-entropy (then they need not
    sum to one)."""
    outputs = outputs.float()
    return torch.sigmoid(outputs) if loss == "binary_cross_entropy" else torch.softmax(outputs, dim=1)


class Predictor(nn.Module):
    """Raw inputs (as the data source gives them, before normalization) in,
    the network's outputs out; in evaluation mode. `predict` gives class
    indices or regression values, `predict_proba` class probabilities;
    `class_names`, `task`, `input_shape` and `input_dtype` say what the model
    expects and means; `info` holds the bundle's record (checkpoint step and
    metrics, versions) when loaded from one."""

    def __init__(self, network: nn.Module, spec: PredictorSpec, info: dict[str, Any] | None = None) -> None:
        super().__init__()
        source = spec.inputs.preprocess
        device = next((t.device for t in network.state_dict().values()), torch.device("cpu"))
        self.preprocess = Preprocess(None if source.mean is None else source.mean.clone(),
                                     None if source.inv_std is None else source.inv_std.clone()).to(device)
        self.network = network
        self.spec = spec
        self.info = dict(info or {})
        self.eval()

    @property
    def task(self) -> Task:
        """classification or regression (a str enum: compares equal to its name)."""
        return self.spec.task

    @property
    def class_names(self) -> tuple[str, ...] | None:
        return self.spec.class_names

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.spec.inputs.shape

    @property
    def input_dtype(self) -> str:
        return self.spec.inputs.dtype

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_compiling():
            check_input_shape(tuple(inputs.shape), self.input_shape)
        return self.network(self.preprocess(inputs))

    @torch.no_grad()
    def _batched(self, inputs: Any) -> tuple[torch.Tensor, bool]:
        """The outputs for a batch (or one sample, then False) given as a
        tensor or a NumPy array, computed on this model's device."""
        x = inputs if isinstance(inputs, torch.Tensor) else torch.as_tensor(np.asarray(inputs))
        single = tuple(x.shape) == self.input_shape
        device = self.preprocess.mean.device if self.preprocess.mean is not None else next(
            (t.device for t in self.network.state_dict().values()), torch.device("cpu"))
        return self((x.unsqueeze(0) if single else x).to(device)), single

    def predict(self, inputs: Any) -> torch.Tensor:
        """Class indices (classification) or the predicted values in the
        targets' shape (regression), for a batch or one sample."""
        out, single = self._batched(inputs)
        if self.task.classifies:
            found = out.argmax(dim=1)
        else:
            found = out.reshape(len(out), *self.spec.target_shape)
        return found[0] if single else found

    def predict_proba(self, inputs: Any) -> torch.Tensor:
        """Class probabilities (softmax; a sigmoid per class for a network
        trained with binary cross-entropy), for a batch or one sample."""
        if not self.task.classifies:
            raise DistTrainError("predict_proba is for classifiers; this model predicts real values (use predict)")
        out, single = self._batched(inputs)
        found = probabilities(out, self.spec.loss)
        return found[0] if single else found


def check_input_shape(shape: tuple[int, ...], expected: tuple[int, ...]) -> None:
    if tuple(shape[1:]) != tuple(expected):
        raise DistTrainError(f"inputs of shape {shape} do not fit this model, which takes a batch of samples of shape "
                             f"{tuple(expected)}: (N, {', '.join(map(str, expected))})")
