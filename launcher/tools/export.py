"""`dist-train export`: the consolidated weights of a checkpoint as one plain
state_dict file, loadable with `torch.load(path, weights_only=True)` into the
model without dist_train (floating tensors in float32, whatever the training
precision or strategy; under ZeRO-3 the checkpoint's model.pt is already
gathered from every rank)."""

from __future__ import annotations

from pathlib import Path

import torch

from dist_train.atomic import atomic_file
from dist_train.monitor import Monitor
from dist_train.checkpoint import CheckpointInfo, find_latest_valid, list_checkpoints, load_file, verify_checkpoint
from dist_train.errors import DistTrainError


def export_weights(source: Path, out: Path, best: bool = False, say=print) -> Path:
    """Write the weights of `source` (a run directory: its newest valid
    checkpoint; or a checkpoint directory) to `out`; returns the checkpoint used.
    `best`: the best weights early stopping kept (best_model.pt), or, when the
    run kept none, the kept checkpoint with the best monitored validation value."""
    source = Path(source)
    if not source.exists():
        raise DistTrainError(f"{source} does not exist; pass a run directory (run.dir) or a checkpoint directory")
    if (source / "MANIFEST.json").exists():
        info = verify_checkpoint(source)
    else:
        info = find_latest_valid(source)
        if info is None:
            raise DistTrainError(f"{source} holds no valid checkpoint (looked in {source / 'checkpoints'})")
    name = "best_model.pt" if best else "model.pt"
    state = load_file(info.path, name)
    if state is None and best and not (source / "MANIFEST.json").exists():
        info, monitor = best_kept_checkpoint(source, info)
        state = load_file(info.path, "model.pt")
        say(f"{info.path.parent.parent} has no best_model.pt (it is written with early_stopping.restore_best=true); "
            f"exporting the kept checkpoint with the best {monitor} instead: {info.path.name} "
            f"({monitor}={info.manifest.get(monitor)})")
    if state is None:
        raise DistTrainError(f"checkpoint {info.path} has no {name}"
                             + ("; it is written with early_stopping.restore_best=true" if best else ""))
    state = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out, "wb") as fh:
        torch.save(state, fh)
    return info.path


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
