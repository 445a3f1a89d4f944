"""Model bundles: what training produced, in a form that predicts anywhere.

`export(source, out)` turns a checkpoint (a run directory's newest valid one,
or the one named; `best`: the best weights) into two files:

- `out` (e.g. model.pt), the **bundle**: a plain dict read with
  `torch.load(out, weights_only=True)`: the weights (float32), the
  `PredictorSpec` (recipe, input shape and dtype, normalization tensors,
  task and class names), the checkpoint's step and metrics, and the versions.
  `load_model(out)` rebuilds the network and returns a `Predictor` (raw
  inputs in, outputs out). Nothing is unpickled.
- `out` with suffix `.pt2`, the **torch-only form**: the same Predictor
  traced by `torch.export` (preprocessing included, any batch size), loaded
  with `torch.export.load(path).module()` by torch alone, no dist-train and
  no model code. Its `extra/dist_train.json` says what the outputs mean. It
  holds no pickled data (weights are raw bytes, the graph is JSON, the
  example inputs are left out). A network torch.export cannot trace (Python
  control flow that depends on the values of tensors) gets no .pt2: export
  says why, and the bundle still works with dist-train.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from dist_train.atomic import atomic_file
from dist_train.checkpoint import CheckpointInfo, find_latest_valid, list_checkpoints, load_file, verify_checkpoint
from dist_train.config import ModelConfig, build_section
from dist_train.errors import ConfigError, DistTrainError
from dist_train.monitor import Monitor
from dist_train.predictor import Predictor, PredictorSpec, file_digest

FORMAT = "dist-train-bundle/1"
PROGRAM_META = "dist_train.json"  # the .pt2's extra file: what the outputs mean


@dataclass(frozen=True)
class Exported:
    bundle: Path
    checkpoint: Path
    program: Path | None  # the .pt2, or None when torch.export could not trace the network
    program_error: str | None = None


# ------------------------------------------------------------ reading a checkpoint

def find_checkpoint(source: Path, say: Callable[[str], None] = print) -> CheckpointInfo:
    """The checkpoint `source` names: a checkpoint directory, or a run
    directory's newest valid one."""
    source = Path(source)
    if not source.exists():
        raise DistTrainError(f"{source} does not exist; pass a run directory (run.dir), a checkpoint directory or a "
                             "model bundle (.pt)")
    if (source / "MANIFEST.json").exists():
        return verify_checkpoint(source)
    info = find_latest_valid(source, warn=say)
    if info is None:
        raise DistTrainError(f"{source} holds no valid checkpoint (looked in {source / 'checkpoints'}); train a run "
                             "there first, or pass a checkpoint directory or a model bundle")
    return info


def checkpoint_weights(source: Path, best: bool = False,
                       say: Callable[[str], None] = print) -> tuple[CheckpointInfo, dict[str, torch.Tensor]]:
    """The checkpoint and its whole model's weights (float32). `best`: the
    weights early stopping kept (best_model.pt), or, when the run kept none,
    the kept checkpoint with the best monitored validation value."""
    info = find_checkpoint(source, say)
    name = "best_model.pt" if best else "model.pt"
    state = load_file(info.path, name)
    if state is None and best and not (Path(source) / "MANIFEST.json").exists():
        info, monitor = best_kept_checkpoint(Path(source), info)
        state = load_file(info.path, "model.pt")
        say(f"{info.path.parent.parent} has no best_model.pt (it is written with early_stopping.restore_best=true); "
            f"exporting the kept checkpoint with the best {monitor} instead: {info.path.name} "
            f"({monitor}={info.manifest.get(monitor)})")
    if state is None:
        raise DistTrainError(f"checkpoint {info.path} has no {name}"
                             + ("; it is written with early_stopping.restore_best=true" if best else ""))
    return info, {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in state.items()}


def best_kept_checkpoint(run_dir: Path, newest: CheckpointInfo) -> tuple[CheckpointInfo, str]:
    """The valid checkpoint taken at an epoch's end with the best value of the
    run's `checkpoint.monitor` (the one retention keeps with keep_best)."""
    monitor = (newest.manifest.get("config") or {}).get("checkpoint", {}).get("monitor", "val_loss")
    choose = Monitor(monitor)
    found: list[CheckpointInfo] = []
    for path in list_checkpoints(run_dir):
        try:
            info = verify_checkpoint(path)
        except DistTrainError:
            continue
        if info.manifest.get(monitor) is not None and not info.manifest.get("step_in_epoch"):
            found.append(info)
    if not found:
        raise DistTrainError(f"{run_dir} has no best_model.pt and no checkpoint with a {monitor} to choose by")
    best = found[0]
    for info in found[1:]:
        if choose.improves(float(info.manifest[monitor]), float(best.manifest[monitor])):
            best = info
    return best, monitor


def checkpoint_record(info: CheckpointInfo) -> dict[str, Any]:
    """The step, epoch and metrics a checkpoint was saved with."""
    m = info.manifest
    metrics = {k: v for k, v in m.items() if k.startswith(("val_", "test_")) and isinstance(v, (int, float))}
    return {"path": str(info.path), "step": int(m.get("global_step", 0)), "epoch": m.get("epoch"),
            "finished": bool(m.get("finished")), "metrics": metrics}


def _bundle_from_checkpoint(source: Path, best: bool, say: Callable[[str], None]) -> dict[str, Any]:
    info, weights = checkpoint_weights(source, best, say)
    spec = load_file(info.path, "predictor.pt")
    if spec is None:
        raise DistTrainError(f"checkpoint {info.path} was written before dist-train kept the model's recipe and "
                             "input preprocessing (predictor.pt), so it cannot become a model that takes raw inputs; "
                             "`dist-train export --state-dict` writes its weights alone, or train the run again")
    from dist_train import __version__

    return {"format": FORMAT, "predictor": spec, "weights": weights, "checkpoint": checkpoint_record(info),
            "versions": {"dist_train": __version__, "torch": str(torch.__version__)}}


# ------------------------------------------------------------ reading a bundle

def read_bundle(path: Path) -> dict[str, Any]:
    """A bundle file's contents, loaded without unpickling; one clear error
    for a file that is not one, or one of a newer format."""
    path = Path(path)
    if not path.is_file():
        raise DistTrainError(f"model {path} does not exist; export one with `dist-train export RUN_DIR --out {path}`")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file, truncated, or holding objects weights_only refuses
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        refused = [line for line in lines if "Unsupported global" in line]
        first = (refused or lines or [type(exc).__name__])[0][:200]
        raise DistTrainError(f"{path} is not a readable dist-train model bundle ({first}); export it again with "
                             "`dist-train export`") from None
    fmt = state.get("format") if isinstance(state, dict) else None
    if fmt is None:
        raise DistTrainError(f"{path} is not a dist-train model bundle (no format record: a plain state_dict?); make "
                             "one with `dist-train export RUN_DIR --out FILE`")
    if fmt != FORMAT:
        raise DistTrainError(f"{path} is a model bundle of format {fmt!r}, which this dist-train does not read (it "
                             f"reads {FORMAT!r}); it was written by a newer dist-train: upgrade to load it")
    return state


def _bundle_of(source: Path, best: bool = False, say: Callable[[str], None] = print) -> tuple[dict[str, Any], Path]:
    """A bundle's contents from a bundle file, or made from a run or
    checkpoint directory; and the directory a user's code may lie beside."""
    source = Path(source)
    if source.is_dir():
        return _bundle_from_checkpoint(source, best, say), source
    return read_bundle(source), source.parent


# ------------------------------------------------------------ the network again

def build_network(spec: PredictorSpec, where: str, beside: Path, model: nn.Module | None = None,
                  allow_changed_code: bool = False) -> nn.Module:
    """The network the recipe describes (or `model`, when given), with the
    user's code checked against the digest recorded at training time."""
    if model is not None:
        if not isinstance(model, nn.Module):
            raise DistTrainError(f"model must be a torch nn.Module, not a {type(model).__name__}")
        return model
    recipe = spec.recipe
    given = "the network was given to dist_train.fit as an object"
    if "model" not in recipe:
        raise DistTrainError(f"{where}: {given} ({recipe.get('name')}), which cannot be built again from its name; "
                             "pass the network: dist_train.load_model(PATH, model=YourNet(...))")
    raw = dict(recipe["model"])
    for path, digest in recipe.get("files", {}).items():
        found = Path(path)
        if not found.is_file() and (beside / found.name).is_file():
            found = beside / found.name  # the code travelled with the bundle
            raw["class_path"] = raw["class_path"].replace(path, str(found))
        if not found.is_file():
            raise DistTrainError(f"{where}: the model's code {path} is not there, nor beside it in {beside}; copy "
                                 f"{Path(path).name} next to the model file")
        now = file_digest(found)
        if now != digest and not allow_changed_code:
            raise DistTrainError(f"{where}: the model's code {found} changed since it was trained (SHA-256 "
                                 f"{now[:12]}..., recorded {digest[:12]}...), so the network it builds may not fit the "
                                 "weights; restore the file, or pass --allow-changed-code (allow_changed_code=True) "
                                 "when the change is harmless")
    from dist_train.models import build_model

    try:
        cfg = build_section(ModelConfig, raw, "model.")
        with torch.random.fork_rng(devices=[]):  # the initial weights are replaced: leave the caller's RNG alone
            return build_model(cfg, spec.inputs.shape, spec.num_outputs, spec.task)
    except ConfigError as exc:
        if recipe.get("kind") == "object":
            raise DistTrainError(f"{where}: {given} ({recipe.get('name')}), and building it again failed ({exc}); "
                                 "pass the network: dist_train.load_model(PATH, model=YourNet(...))") from None
        raise DistTrainError(f"{where}: {exc}") from None


def predictor_from(state: dict[str, Any], where: str, beside: Path, model: nn.Module | None = None,
                   allow_changed_code: bool = False) -> Predictor:
    spec = PredictorSpec.from_state(state["predictor"], where)
    network = build_network(spec, where, beside, model, allow_changed_code)
    try:
        network.load_state_dict(state["weights"])
    except (RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0][:300]
        raise DistTrainError(f"{where}: the weights do not fit the network {type(network).__name__} builds ({first}); "
                             "build it as it was trained") from None
    info = {k: state[k] for k in ("format", "checkpoint", "versions") if k in state}
    return Predictor(network.float(), spec, info)


def load_model(source: str | Path, *, model: nn.Module | None = None, allow_changed_code: bool = False,
               best: bool = False) -> Predictor:
    """A trained model that takes raw inputs, in evaluation mode, on the CPU.

    source: a bundle written by `dist-train export` (or `dist_train.export`),
    or a run or checkpoint directory (its newest valid checkpoint; `best`: the
    best weights). model: the network to put the weights into, for a network
    given to `dist_train.fit` as an object. The user's code named by a
    class_path is checked against the digest taken at training time (a
    changed file is refused unless `allow_changed_code`)."""
    state, beside = _bundle_of(Path(source), best)
    return predictor_from(state, str(source), beside, model, allow_changed_code)


# ------------------------------------------------------------ writing

def export(source: str | Path, out: str | Path, *, best: bool = False, model: nn.Module | None = None,
           torch_only: bool = True, allow_changed_code: bool = False,
           say: Callable[[str], None] = print) -> Exported:
    """Write the bundle `out` (and, with `torch_only`, `out` with suffix .pt2)
    from a checkpoint: a run directory's newest valid one, a checkpoint
    directory, or (re-exporting) a bundle. See the module's docstring."""
    source, out = Path(source), Path(out)
    state, beside = _bundle_of(source, best, say)
    predictor = predictor_from(state, str(source), beside, model, allow_changed_code)  # it must load before it is written
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out, "wb") as fh:
        torch.save(state, fh)
    program, error = None, None
    if torch_only:
        program = out.with_suffix(".pt2") if out.suffix != ".pt2" else out.with_suffix(".pt2.pt2")
        try:
            export_program(predictor, program, state)
        except DistTrainError as exc:
            program, error = None, str(exc)
    return Exported(out, Path(state["checkpoint"]["path"]), program, error)


def program_meta(predictor: Predictor, state: dict[str, Any]) -> dict[str, Any]:
    """What a torch-only user needs to read the outputs (the .pt2's extra file)."""
    spec = predictor.spec
    return {"format": FORMAT, "task": spec.task.value, "class_names": list(spec.class_names or []) or None,
            "num_outputs": spec.num_outputs, "target_shape": list(spec.target_shape),
            "outputs": ("logits: apply sigmoid per class" if spec.loss == "binary_cross_entropy" else
                        "logits: apply softmax over dim 1") if spec.task.classifies else "values",
            "input_shape": list(spec.inputs.shape), "input_dtype": spec.inputs.dtype,
            "preprocessing": f"included ({spec.inputs.normalize}): give raw inputs",
            "source": spec.inputs.source, "checkpoint": state.get("checkpoint"), "versions": state.get("versions")}


def export_program(predictor: Predictor, path: Path, state: dict[str, Any]) -> None:
    """The Predictor traced by torch.export, for any batch size, saved without
    its example inputs (so the file holds no pickled data)."""
    shape, dtype = predictor.input_shape, getattr(torch, predictor.input_dtype)
    example = torch.zeros((2, *shape), dtype=dtype)
    try:
        program = torch.export.export(predictor, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},),
                                      strict=False)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise DistTrainError(
            f"torch.export could not trace {type(predictor.network).__name__} ({type(exc).__name__}: {first}), so no "
            f"{path.name} was written; the bundle works with dist_train.load_model. To get a torch-only file, make "
            "the forward pass traceable (no Python branches on tensor values: torch.cond, torch.where)") from None
    program._example_inputs = None  # type: ignore[attr-defined]
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={PROGRAM_META: json.dumps(program_meta(predictor, state))})
    with atomic_file(path, "wb") as fh:
        fh.write(buffer.getvalue())


def export_state_dict(source: Path, out: Path, best: bool = False, say: Callable[[str], None] = print) -> Path:
    """The weights alone, as a plain state_dict (float32): `dist-train export --state-dict`."""
    info, weights = checkpoint_weights(source, best, say)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out, "wb") as fh:
        torch.save(weights, fh)
    return info.path
