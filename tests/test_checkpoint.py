"""Checkpoints: plain-torch loading, atomicity under kill -9, corrupt and
partial checkpoints skipped, retention, every rank on the same checkpoint."""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from dist_train.checkpoint import MANIFEST, apply_retention, find_latest_valid, list_checkpoints, verify_checkpoint
from dist_train.rng import rng_state, set_rng_state
from dist_train.config import load_config
from dist_train.env import DistEnv
from dist_train.errors import DistTrainError
from dist_train.run import run
from tests.conftest import REPO
from tests.multiproc import run_workers

SMALL = ["data.source=synthetic", "data.num_samples=300", "data.num_features=8", "data.num_classes=3",
         "model.hidden_sizes=[8]", "train.global_batch_size=32", "train.epochs=3", "dist.device=cpu",
         "checkpoint.every_steps=4", "checkpoint.keep_last=2", "train.log_every_steps=5"]


def small_run(run_dir, *extra, env=None):
    return run(load_config(None, [*SMALL, f"run.dir={run_dir}", *extra]), env or DistEnv())


def test_model_weights_load_with_plain_torch_without_dist_train(tmp_path):
    assert small_run(tmp_path) == 0
    path = find_latest_valid(tmp_path).path
    code = textwrap.dedent(f"""
        import sys, torch
        state = torch.load({str(path / 'model.pt')!r}, weights_only=True)
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        net.load_state_dict({{k.removeprefix("net."): v for k, v in state.items()}}, strict=True)
        assert "dist_train" not in sys.modules
        print("loaded", sum(p.numel() for p in net.parameters()))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert "loaded 99" in proc.stdout
    for name in ("trainer.pt", "rank-00000.pt"):  # the rest loads without unpickling too
        assert torch.load(path / name, weights_only=True) is not None


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    state = rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_run_directory_holds_config_metrics_and_retained_checkpoints(tmp_path):
    assert small_run(tmp_path) == 0
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "metrics.jsonl").is_file()
    steps = [int(p.name.split("-")[1]) for p in list_checkpoints(tmp_path)]
    # 21 steps, every 4 and at epoch ends (7, 14) and the end (21): the last 2, plus the best by val_loss
    manifest = json.loads((tmp_path / "checkpoints" / f"step-{steps[0]:08d}" / MANIFEST).read_text())
    assert steps[:2] == [21, 20] and manifest["finished"] is True
    assert len(steps) <= 3
    best = [e for e in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if e["event"] == "epoch"]
    best_step = min(best, key=lambda e: e["val_loss"])["step"]
    assert best_step in steps


def test_finished_run_is_not_trained_again_and_fresh_keeps_the_old_run(tmp_path):
    run_dir = tmp_path / "r"
    assert small_run(run_dir) == 0
    lines = (run_dir / "metrics.jsonl").read_text()
    assert small_run(run_dir) == 0
    assert (run_dir / "metrics.jsonl").read_text() == lines  # nothing appended
    assert small_run(run_dir, "run.resume=never") == 0
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("r.previous-")]
    assert len(moved) == 1 and (moved[0] / "metrics.jsonl").read_text() == lines


def damage(path: Path, how: str) -> None:
    target = path / "model.pt"
    if how == "truncated":
        target.write_bytes(target.read_bytes()[:100])
    elif how == "corrupt":
        data = bytearray(target.read_bytes())
        data[200:260] = bytes(60)
        target.write_bytes(bytes(data))
    elif how == "no_manifest":
        (path / MANIFEST).unlink()
    elif how == "missing_file":
        (path / "trainer.pt").unlink()


@pytest.mark.parametrize("how, words", [("truncated", "(truncated)"), ("corrupt", "does not match its SHA-256"),
                                        ("no_manifest", "its save did not finish"), ("missing_file", "trainer.pt is missing")])
def test_a_bad_newest_checkpoint_is_reported_and_skipped(tmp_path, capsys, how, words):
    assert small_run(tmp_path, "train.max_steps=10", "checkpoint.keep_last=5") == 0
    newest, previous = list_checkpoints(tmp_path)[:2]
    damage(newest, how)
    with pytest.raises(DistTrainError, match=words.replace("(", r"\(").replace(")", r"\)")):
        verify_checkpoint(newest)
    messages = []
    assert find_latest_valid(tmp_path, warn=messages.append).path == previous
    assert len(messages) == 1 and str(newest) in messages[0] and words in messages[0]
    # and a run resumes from the previous one (the damaged one is not "finished")
    capsys.readouterr()
    assert small_run(tmp_path, "train.max_steps=12", "checkpoint.keep_last=5") == 0
    assert f"resuming from {previous}" in capsys.readouterr().out


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
from dist_train.env import DistEnv

class Part:
    def __init__(self, state): self.state = state
    def state_dict(self): return self.state
    def load_state_dict(self, state): self.state = state

model, trainer = Part({"w": torch.randn(2_000_000)}), Part({"step": 0})  # 8 MB: a save takes a moment
checkpointer = Checkpointer(Path(sys.argv[1]), Comm(), DistEnv(), 60.0, keep_last=1000)
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


def resume_worker(env, run_dir):
    status = small_run(run_dir, "train.max_steps=14", "checkpoint.keep_last=5", env=env)
    events = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return status, [e for e in events if e["event"] == "resume"][-1]["step"]


def test_every_rank_resumes_from_the_same_checkpoint(tmp_path):
    run_workers(_first_part, 2, str(tmp_path), timeout_s=120)
    newest, previous = list_checkpoints(tmp_path)[:2]
    damage(newest, "corrupt")
    (s0, step0), (s1, step1) = run_workers(resume_worker, 2, str(tmp_path), timeout_s=120)
    assert s0 == s1 == 0
    assert step0 == step1 == int(previous.name.split("-")[1])


def _first_part(env, run_dir):
    return small_run(run_dir, "train.max_steps=10", "checkpoint.keep_last=5", env=env)


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
    exported, saved = torch.load(out, weights_only=True), torch.load(best.path / "model.pt", weights_only=True)
    assert all(torch.equal(exported[k], saved[k]) for k in saved)
