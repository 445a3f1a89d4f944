"""Checkpoint files without a training run: the RNG state through a
weights-only file, retention, and kill -9 during a save (a small process
saving with the Checkpointer) leaving the previous checkpoint loadable."""

import os
import random
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from dist_train.checkpoint import MANIFEST, Checkpointer, apply_retention, find_latest_valid
from dist_train.comm import Comm
from dist_train.env import DistEnv
from dist_train.rng import rng_state, set_rng_state
from tests.conftest import REPO


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    state = rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_retention_keeps_the_last_k_and_the_best(tmp_path):
    root = tmp_path / "checkpoints"
    for step in range(1, 7):
        (root / f"step-{step:08d}").mkdir(parents=True)
        (root / f"step-{step:08d}" / MANIFEST).write_text("{}")
    (root / "step-00000003" / MANIFEST).unlink()  # an abandoned save, older than valid ones
    removed = apply_retention(tmp_path, keep_last=2, best_step=2)
    assert sorted(p.name for p in root.iterdir()) == ["step-00000002", "step-00000005", "step-00000006"]
    assert len(removed) == 3


SAVER = """
import sys, torch
from pathlib import Path
from dist_train.checkpoint import CheckpointParts, Checkpointer
from dist_train.comm import Comm
from dist_train.config import CheckpointConfig
from dist_train.env import DistEnv

class Part:
    def __init__(self, state): self.state = state
    def state_dict(self): return self.state
    def load_state_dict(self, state): self.state = state

model, trainer = Part({"w": torch.randn(2_000_000)}), Part({"step": 0})  # 8 MB: a save takes a moment
checkpointer = Checkpointer(Path(sys.argv[1]), Comm(), DistEnv(), 60.0, CheckpointConfig(keep_last=1000))
for step in range(1, 1000):
    print(f"saving {step}", flush=True)
    trainer.state = {"step": step}
    checkpointer.save(step, CheckpointParts({"model.pt": model, "trainer.pt": trainer}, {"r": Part({"r": step})}), {})
    checkpointer.wait()
"""


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_9_during_a_save_leaves_the_previous_checkpoint_loadable(tmp_path, seed):
    proc = subprocess.Popen([sys.executable, "-c", SAVER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": REPO})
    target = 3 + random.Random(seed).randrange(4)
    try:
        for line in proc.stdout:  # kill the moment the save of step `target` begins
            if line.strip() == f"saving {target}":
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait(timeout=30)
    info = find_latest_valid(tmp_path, warn=lambda m: None)
    assert info is not None and info.global_step in (target - 1, target)
    assert torch.load(info.path / "trainer.pt", weights_only=True)["step"] == info.global_step
    assert torch.load(info.path / "model.pt", weights_only=True)["w"].shape == (2_000_000,)


def test_a_zero_checkpoint_on_another_number_of_workers_is_refused_before_anything_starts(tmp_path):
    """DeepSpeed loads ZeRO partitions only on as many workers as saved them: one line saying so."""
    import json

    from dist_train.config import load_config
    from dist_train.errors import DistTrainError
    from dist_train.resolve import resolve
    from dist_train.start import plan_start

    cfg = load_config(None, [f"run.dir={tmp_path}", "strategy.name=deepspeed", "strategy.zero_stage=2",
                             "train.global_batch_size=48"])
    checkpoint = tmp_path / "checkpoints" / "step-00000010"
    checkpoint.mkdir(parents=True)
    (checkpoint / "MANIFEST.json").write_text(json.dumps({
        "format": "dist-train-checkpoint/2", "global_step": 10, "world_size": 2, "epoch": 1, "files": {},
        "strategy": "deepspeed", "config": {"strategy": {"name": "deepspeed", "zero_stage": 2}}}))
    with pytest.raises(DistTrainError, match=r"ZeRO-2 optimizer state partitioned over 2 workers, which DeepSpeed "
                                             r"loads only on 2 \(this job has 3\): resume with 2 workers"):
        plan_start(cfg, resolve(cfg, 3))


def test_the_checkpointer_decides_when_a_save_is_due_and_which_best_checkpoint_retention_keeps(tmp_path):
    from dist_train.config import CheckpointConfig
    from dist_train.train_state import TrainState

    ck = Checkpointer(tmp_path, Comm(), DistEnv(), 60.0, CheckpointConfig(every_steps=5, every_epochs=2,
                                                                          monitor="val_accuracy"))
    assert [s for s in range(1, 16) if ck.due_after_step(s)] == [5, 10, 15]
    assert [e for e in range(1, 7) if ck.due_after_epoch(e)] == [2, 4, 6]
    state = TrainState(global_step=10, last_val={"val_accuracy": 0.5, "val_loss": 1.0})
    assert ck.best_to_keep(state) == 10 and state.best_checkpoint == [0.5, 10]
    state.global_step, state.last_val = 20, {"val_accuracy": 0.4, "val_loss": 0.5}  # worse by the monitor
    assert ck.best_to_keep(state) == 10
    state.global_step, state.step_in_epoch, state.last_val = 23, 3, {"val_accuracy": 0.9}  # mid-epoch: not measured
    assert ck.best_to_keep(state) == 10
    never = Checkpointer(tmp_path, Comm(), DistEnv(), 60.0, CheckpointConfig(every_steps=0, every_epochs=0,
                                                                             keep_best=False))
    assert not any(never.due_after_step(s) or never.due_after_epoch(s) for s in range(1, 20))
    assert never.best_to_keep(TrainState(global_step=4, last_val={"val_loss": 0.1})) is None
