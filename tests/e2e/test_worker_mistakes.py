"""A mistake found in the workers of `dist-train launch` (the user's model,
data or config meeting each other) is said once, as `dist-train run` says it,
with exit status 2 and none of torch's log lines: the ranks agree on it
before the first collective instead of one of them failing alone. And what
synchronized batch norm converted is said once, not by every rank."""

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow
PROJECT = f"{REPO}/tests/user_project"
CUSTOM = ["data.source=custom", f"data.class_path={PROJECT}/data.py:make_splits", "data.loader_workers=0"]
TORCH_LOG = re.compile(r"^[IWE]\d{4} ", re.M)

MISTAKES = {
    "an init_args key the class does not take": (
        [f"model.class_path={PROJECT}/nets.py:SmallBNNet", "model.init_args={widht: 3}"],
        "config key 'model.init_args.widht': is not a parameter of SmallBNNet"),
    "outputs that do not fit the classes": (
        [*CUSTOM, f"model.class_path={PROJECT}/nets.py:wrong_outputs"],
        "the model's outputs have shape (2, 4) for a batch of 2, but the targets need (2, 3)"),
    "a data factory that raises": (
        ["data.source=custom", f"data.class_path={PROJECT}/data.py:raising"],
        "calling raising(**init_args) failed: ValueError: cannot read 10 samples from /nowhere"),
    # read by DataLoader reader processes in the ranks' shared statistics pass: the process also exits
    # (a failed reader's loader left running once kept it waiting forever after the message)
    "an item that fails to read": (
        ["data.source=custom", f"data.class_path={PROJECT}/data.py:failing_item", "data.loader_workers=2"],
        "reading the train split's item 5 failed: FileNotFoundError: sample-5.png"),
    "ragged items": (
        ["data.source=custom", f"data.class_path={PROJECT}/data.py:ragged_item"],
        "the train split's item 0 and the train split's item 7 have inputs of different shapes"),
    "cross-entropy on regression data": (
        [*CUSTOM, "data.init_args={regression: true}", "train.loss=cross_entropy"],
        "config key 'train.loss': 'cross_entropy' does not fit this data set, whose targets are real values"),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_a_mistake_met_in_the_workers_is_said_once_with_exit_status_2(tmp_path, mistake):
    overrides, words = MISTAKES[mistake]
    (tmp_path / "run.yaml").write_text("train: {epochs: 1, global_batch_size: 32}\ndist: {device: cpu}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "launcher", "launch", "--nproc-per-node", "2", tmp_path / "run.yaml", *overrides,
         f"run.dir={tmp_path / 'run'}", "wandb.mode=disabled"],
        capture_output=True, text=True, timeout=240, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO,
                                                                   "OMP_NUM_THREADS": "1"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert out.count(words) == 1, out
    assert out.count("dist-train: error:") == 1, out
    assert not TORCH_LOG.search(out) and "Traceback" not in out, out
    assert not (tmp_path / "run").exists()  # nothing written: the run directory is as it was


@pytest.mark.parametrize("model, layers", [(["model.batch_norm=true", "model.hidden_sizes=[32,16]"], 2),
                                           ([f"model.class_path={PROJECT}/nets.py:regressor"], 0)])
def test_synchronized_batch_norm_says_once_how_many_layers_it_synchronizes(tmp_path, model, layers):
    import json

    (tmp_path / "run.yaml").write_text("train: {epochs: 1, global_batch_size: 32, loss: mse}\n" if layers == 0 else
                                       "train: {epochs: 1, global_batch_size: 32}\n")
    data = ["data.source=diabetes"] if layers == 0 else []
    proc = subprocess.run(
        [sys.executable, "-m", "launcher", "launch", "--nproc-per-node", "2", tmp_path / "run.yaml", *model, *data,
         "model.sync_batchnorm=true", "dist.device=cpu", f"run.dir={tmp_path / 'run'}", "wandb.mode=disabled"],
        capture_output=True, text=True, timeout=240, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO,
                                                                   "OMP_NUM_THREADS": "1"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    start = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert start["event"] == "start" and start["sync_batchnorm_layers"] == layers
    assert f"sync_batchnorm_layers={layers}" in proc.stdout  # the start line
    warned = "model.sync_batchnorm is true but the model has no batch-norm layer: nothing is synchronized"
    assert out.count(warned) == (1 if layers == 0 else 0) and "UserWarning" not in out, out
    assert "built-in mlp" not in out  # a class_path model is not told about the built-in one
