"""`dist-train export --best` as a command: without best_model.pt it takes
the kept best checkpoint."""

import subprocess
import sys

import torch

from dist_train.checkpoint import list_checkpoints, verify_checkpoint
from tests.conftest import REPO
from tests.helpers import small_run


def test_export_best_without_best_model_takes_the_kept_best_checkpoint(tmp_path):
    # validation loss rises after epoch 1 with this learning rate, so the best kept checkpoint is not the newest
    assert small_run(tmp_path, "train.epochs=6", "optim.lr=0.3", "checkpoint.every_steps=0", "wandb.mode=disabled") == 0
    kept = [verify_checkpoint(p) for p in list_checkpoints(tmp_path)]
    at_epoch_end = [k for k in kept if not k.manifest["step_in_epoch"]]
    best = min(at_epoch_end, key=lambda k: k.manifest["val_loss"])
    out = tmp_path / "best.pt"
    proc = subprocess.run([sys.executable, "-m", "launcher", "export", str(tmp_path), "--out", str(out), "--best"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "has no best_model.pt" in proc.stdout and f"{best.path.name} (val_loss={best.manifest['val_loss']})" in proc.stdout
    exported = torch.load(out, weights_only=True)["weights"]
    saved = torch.load(best.path / "model.pt", weights_only=True)
    assert all(torch.equal(exported[k], saved[k]) for k in saved)
