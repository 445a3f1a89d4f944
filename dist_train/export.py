"""`dist-train export`: the consolidated weights of a checkpoint as one plain
state_dict file, loadable with `torch.load(path, weights_only=True)` into the
model without dist_train (floating tensors in float32, whatever the training
precision or strategy; under ZeRO-3 the checkpoint's model.pt is already
gathered from every rank)."""

from __future__ import annotations

from pathlib import Path

import torch

from dist_train.atomic import atomic_file
from dist_train.checkpoint import find_latest_valid, load_file, verify_checkpoint
from dist_train.errors import DistTrainError


def export_weights(source: Path, out: Path, best: bool = False) -> Path:
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
    if state is None:
        raise DistTrainError(f"checkpoint {info.path} has no {name}"
                             + ("; it is written with early_stopping.restore_best=true" if best else ""))
    state = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out, "wb") as fh:
        torch.save(state, fh)
    return info.path
