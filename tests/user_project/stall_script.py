"""A training script (dist_train.fit) that brings a fault of its own, once
per ONCE file, on rank 1:

    dist-train launch --nproc-per-node 2 tests/user_project/stall_script.py FAULT ONCE [KEY=VALUE ...]

FAULT: `skip_eval` (rank 1 skips the first validation: the others wait for it
in the evaluation's all-reduce), `slow_save` (rank 1's second checkpoint
write stalls in a file system that does not answer), `none`."""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stalls import fires  # noqa: E402

import dist_train  # noqa: E402
from dist_train import checkpoint, trainer  # noqa: E402

REPO = Path(__file__).resolve().parent.parent.parent
fault, once, *overrides = sys.argv[1:]

if fault == "skip_eval" and os.environ.get("RANK") == "1":
    evaluate = trainer.Trainer.evaluate

    def skipping(self, split):
        if split == "val" and fires(once):
            return {"loss": 1.0, "accuracy": 0.5, "count": 1}  # no evaluation, no collective: the others wait
        return evaluate(self, split)

    trainer.Trainer.evaluate = skipping

if fault == "slow_save" and os.environ.get("RANK") == "1":
    save_file, own_files = checkpoint._save_file, []

    def stalling(obj, path, progress=None):
        if Path(path).name.startswith("rank-"):
            own_files.append(path)
            if len(own_files) == 2 and fires(once):
                time.sleep(600)  # a write that never returns
        return save_file(obj, path, progress)

    checkpoint._save_file = stalling

if __name__ == "__main__":
    dist_train.fit(REPO / "configs" / "quickstart.yaml", *overrides)
