"""The `dist-train` command as a user runs it: real subprocesses, real
torchrun, real files."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO

DIST_TRAIN = [sys.executable, "-m", "launcher"]
TIMEOUT = 300


def cli(*args, timeout=TIMEOUT, **kw):
    return subprocess.run([*DIST_TRAIN, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, **kw)


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_quickstart_with_two_workers_reaches_95_percent(tmp_path):
    run_dir = tmp_path / "quickstart"
    proc = cli("launch", "--nproc-per-node", "2", "configs/quickstart.yaml", f"run.dir={run_dir}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    events = read_metrics(run_dir)
    start = next(e for e in events if e["event"] == "start")
    assert start["world_size"] == 2 and start["per_rank_batch_size"] == 32 and start["strategy"] == "ddp"
    test = [e for e in events if e["event"] == "test"]
    assert len(test) == 1  # rank 0 alone writes
    assert test[0]["test_accuracy"] >= 0.95
    written = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert written["run"]["dir"] == str(run_dir) and written["model"]["hidden_sizes"] == [256]


def test_run_as_plain_python_process(tmp_path):
    proc = cli("run", "configs/cpu_test.yaml", f"run.dir={tmp_path}", "train.epochs=2")
    assert proc.returncode == 0, proc.stderr
    events = read_metrics(tmp_path)
    assert events[0]["world_size"] == 1 and events[0]["strategy"] == "single"
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [0, 1]
    assert "[test]" in proc.stdout


@pytest.mark.slow
def test_run_under_real_torchrun(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "launcher", "run", "configs/cpu_test.yaml", f"run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=TIMEOUT, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    events = read_metrics(tmp_path)
    assert events[0]["world_size"] == 2 and events[0]["strategy"] == "ddp"
    assert sum(e["event"] == "test" for e in events) == 1


@pytest.mark.parametrize("args, words", [((), "run"), (("run",), "CONFIG"), (("launch",), "--nproc-per-node"),
                                         (("sweep",), "--dry-run"), (("check",), "--subset")])
def test_help_explains_each_command(args, words):
    proc = cli(*args, "--help")
    assert proc.returncode == 0 and words in proc.stdout and "usage: dist-train" in proc.stdout


@pytest.mark.parametrize("args, words", [(("train", "x.yaml"), "invalid choice: 'train'"),
                                         (("launch", "--nprocs", "2", "configs/cpu_test.yaml"), "unrecognized arguments"),
                                         ((), "required: COMMAND")])
def test_wrong_command_or_flag_prints_usage_and_fails(args, words):
    proc = cli(*args)
    assert proc.returncode == 2
    assert "usage: dist-train" in proc.stderr and words in proc.stderr


def test_bad_config_fails_before_any_worker_starts(tmp_path):
    run_dir = tmp_path / "never"
    proc = cli("launch", "--nproc-per-node", "2", "configs/cpu_test.yaml", "optim.name=lbfgs", f"run.dir={run_dir}")
    assert proc.returncode == 2
    assert "config key 'optim.name': 'lbfgs' is not allowed" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not run_dir.exists()


def test_batch_not_divisible_by_workers_is_named_at_launch(tmp_path):
    proc = cli("launch", "--nproc-per-node", "3", "configs/cpu_test.yaml", "train.global_batch_size=32",
               f"run.dir={tmp_path / 'never'}")
    assert proc.returncode == 2
    assert "'train.global_batch_size': 32 is not divisible by 3 worker(s)" in proc.stderr
    assert "30, 33" in proc.stderr


def test_a_model_that_does_not_fit_the_data_is_refused_before_any_worker_starts(tmp_path):
    # a CNN on flat features: found from the data's shape by launch itself
    proc = cli("launch", "--nproc-per-node", "2", "configs/cpu_test.yaml", "model.name=cnn", f"run.dir={tmp_path}")
    assert proc.returncode == 2
    assert proc.stderr.startswith("dist-train: error: config key 'model.name': cnn needs image inputs")
    assert proc.stdout == "" and proc.stderr.strip().count("\n") == 0 and not any(tmp_path.iterdir())


def test_version():
    proc = cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == "dist-train 0.1.0"


def test_missing_config_file(tmp_path):
    proc = cli("run", tmp_path / "missing.yaml")
    assert proc.returncode == 2 and "does not exist" in proc.stderr
