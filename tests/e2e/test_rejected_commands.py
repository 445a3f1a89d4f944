"""A command that cannot run changes nothing: refused resume changes, a
missing data set, a corrupt checkpoint named, shards that do not divide, bad
launcher flags. Each leaves every file of the run directory as it was (hashed
before and after), and `launch` refuses before starting a worker."""

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dist_train.data.prepare import PrepareOptions, prepare
from tests.conftest import REPO

pytestmark = pytest.mark.slow

JOB = ["configs/cpu_test.yaml", "train.epochs=3", "checkpoint.every_steps=10", "wandb.mode=offline"]


def cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "launcher", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})


def snapshot(root: Path) -> dict[str, str]:
    """Every file and directory under `root` and beside it (the lock), with the files' SHA-256. A symbolic
    link is recorded by where it points: W&B links each run's debug-core.log to a file in its own cache,
    named by the second its core started, which another run started in that second writes to as well."""
    found = {}
    for path in sorted(root.parent.rglob("*")):
        if path == root or root in path.parents or path.name.startswith(f".{root.name}"):
            found[str(path.relative_to(root.parent))] = (
                f"-> {os.readlink(path)}" if path.is_symlink()
                else hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir")
    return found


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    path = tmp_path_factory.mktemp("shards") / "synthetic"
    prepare("synthetic", PrepareOptions(out=path, num_samples=600, input_shape=(16,), num_classes=4, train_shards=4))
    return path


@pytest.fixture(scope="module")
def unfinished(tmp_path_factory):
    """A finished run of 3 epochs; the tests ask it to go on to 6."""
    run_dir = tmp_path_factory.mktemp("unfinished") / "run"
    proc = cli("run", *JOB, f"run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr
    return run_dir


REFUSED = [
    ("model.hidden_sizes=[8]", "model.hidden_sizes [32] -> [8] (the checkpoint holds another network)"),
    ("data.num_samples=500", "data.num_samples 600 -> 500 (another data set)"),
    ("train.loss=mse", "train.loss 'cross_entropy' -> 'mse' (another loss)"),
    ("optim.name=sgd", "optim.name 'adam' -> 'sgd' (the checkpoint holds another optimizer's state)"),
    ("train.global_batch_size=64", "train.global_batch_size 32 -> 64"),
]


@pytest.mark.parametrize("override, words", REFUSED)
def test_a_refused_resume_change_names_it_and_changes_nothing(unfinished, override, words):
    before = snapshot(unfinished)
    proc = cli("run", *JOB, f"run.dir={unfinished}", "train.epochs=6", override)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert words in proc.stderr and "Pass --fresh to start over" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert snapshot(unfinished) == before


def test_another_normalization_than_the_checkpoints_is_refused_when_it_loads_and_changes_nothing(unfinished):
    # the run normalized its flat features per_feature (auto); which mode auto gives is known once the data is,
    # so the checkpoint's record of it is compared as the checkpoint loads, still before anything is written
    before = snapshot(unfinished)
    proc = cli("run", *JOB, f"run.dir={unfinished}", "train.epochs=6", "data.normalize=per_channel")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert ("the checkpoint's run normalized them 'per_feature'" in proc.stderr
            and "Set data.normalize=per_feature to go on with it" in proc.stderr), proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert snapshot(unfinished) == before


def test_a_strategy_with_another_state_layout_is_refused(unfinished):
    pytest.importorskip("deepspeed")
    before = snapshot(unfinished)
    proc = cli("run", *JOB, f"run.dir={unfinished}", "strategy.name=deepspeed", "strategy.zero_stage=2")
    assert proc.returncode == 2 and "strategy.name 'single' -> 'deepspeed'" in proc.stderr, proc.stderr
    assert snapshot(unfinished) == before


def test_launch_refuses_a_resume_change_before_any_worker_starts(unfinished):
    before = snapshot(unfinished)
    start = time.monotonic()
    proc = cli("launch", "--nproc-per-node", "2", *JOB, f"run.dir={unfinished}", "model.hidden_sizes=[8]")
    assert time.monotonic() - start < 10
    assert proc.returncode == 2 and "model.hidden_sizes [32] -> [8]" in proc.stderr, proc.stderr
    assert proc.stdout == "" and proc.stderr.strip().count("\n") == 0  # no worker said anything: none started
    assert snapshot(unfinished) == before


def test_a_missing_data_set_or_a_corrupt_checkpoint_named_changes_nothing(unfinished, tmp_path):
    before = snapshot(unfinished)
    proc = cli("run", *JOB, f"run.dir={unfinished}", "train.epochs=6", "data.source=shards", "data.path=/nonexistent")
    assert proc.returncode == 2
    assert "data.path '/nonexistent' is not a directory" in proc.stderr, proc.stderr
    assert snapshot(unfinished) == before
    newest = sorted((unfinished / "checkpoints").iterdir())[-1]
    copy = tmp_path / newest.name
    subprocess.run(["cp", "-r", str(newest), str(copy)], check=True)
    (copy / "model.pt").write_bytes((copy / "model.pt").read_bytes()[:-10])  # truncated
    proc = cli("run", *JOB, f"run.dir={unfinished}", "train.epochs=6", "--resume", copy)
    assert proc.returncode == 2 and "model.pt has" in proc.stderr and "(truncated)" in proc.stderr, proc.stderr
    assert snapshot(unfinished) == before


def test_a_missing_shard_directory_on_an_unfinished_shard_run_changes_nothing(shards, tmp_path):
    run_dir = tmp_path / "run"
    data = ["data.source=shards", f"data.path={shards}"]
    assert cli("run", *JOB, *data, f"run.dir={run_dir}").returncode == 0
    before = snapshot(run_dir)
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    proc = cli("run", *JOB, "data.source=shards", "data.path=/nonexistent", f"run.dir={run_dir}", "train.epochs=6")
    assert proc.returncode == 2, proc.stderr
    assert "data.path '/nonexistent' is not a directory" in proc.stderr
    assert snapshot(run_dir) == before  # config.yaml, metrics.jsonl and wandb/ untouched: no new W&B run


def test_applied_changes_are_printed_once_recorded_and_written_to_the_config(unfinished, tmp_path):
    run_dir = tmp_path / "run"
    subprocess.run(["cp", "-r", str(unfinished), str(run_dir)], check=True)
    proc = cli("run", *JOB, f"run.dir={run_dir}")
    assert proc.returncode == 0
    assert "already finished at step 42; nothing to do" in proc.stdout and "resuming from" not in proc.stdout
    proc = cli("run", *JOB, f"run.dir={run_dir}", "train.epochs=4", "optim.lr=0.02")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("dist-train: resuming from")]
    assert len(lines) == 1 and lines[0].endswith("changed settings: optim.lr 0.01 -> 0.02, train.epochs 3 -> 4")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    resume = next(r for r in records if r["event"] == "resume")
    assert resume["changed"] == {"optim.lr": [0.01, 0.02], "train.epochs": [3, 4]}
    assert [r["lr"] for r in records if r["event"] == "lr"][-1] == 0.02  # the run went on with it
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["optim"]["lr"] == 0.02


@pytest.mark.parametrize("what", ["missing", "indivisible"])
def test_launch_finds_data_mistakes_before_starting_a_worker(shards, tmp_path, what):
    path, extra = (tmp_path / "nowhere", []) if what == "missing" else (shards, ["data.loader_workers=3"])
    start = time.monotonic()
    proc = cli("launch", "--nproc-per-node", "2", *JOB, "data.source=shards", f"data.path={path}", *extra,
               f"run.dir={tmp_path / 'run'}")
    assert time.monotonic() - start < 10
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == "" and proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    if what == "missing":
        assert f"data.path '{path}' is not a directory" in proc.stderr and f"--out {path}" in proc.stderr
    else:
        assert "4 shards, which does not divide among 2 rank(s) x 3 loader worker(s) = 6 readers" in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag, value", [("--nproc-per-node", "0"), ("--nproc-per-node", "-2"),
                                         ("--nproc-per-node", "two"), ("--nnodes", "2:1"),
                                         ("--max-restarts", "-1")])
def test_launcher_flags_are_checked_like_config_keys(tmp_path, flag, value):
    proc = cli("launch", flag, value, *JOB, f"run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"dist-train: error: {flag} '{value}' is not allowed: ") or \
        proc.stderr.startswith(f"dist-train: error: {flag} {value} is not allowed: "), proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert not (tmp_path / "run").exists()
