"""Real sweeps through the CLI whose trials are real `dist-train launch` runs,
interrupted and resumed."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO


DIST_TRAIN = [sys.executable, "-m", "launcher"]


# one thread per process: trials and the best config's rerun compute the same numbers
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}


FAST = ["train.epochs=2", "wandb.mode=disabled", "train.log_every_steps=1000"]


def sweep_cli(*args, timeout=240):
    return subprocess.run([*DIST_TRAIN, "sweep", *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env=ENV)


def epochs_of(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["event"] == "epoch"]


@pytest.mark.slow
def test_random_sweep_resumes_ranks_its_trials_and_writes_a_best_config_that_runs(tmp_path):
    out = tmp_path / "sweep"
    common = ["configs/sweep_digits.yaml", f"out_dir={out}", "workers_per_trial=1", "parallel_trials=2", *FAST]
    first = sweep_cli(*common, "budget.max_trials=2")
    assert first.returncode == 0, first.stdout + first.stderr
    done = {i: (out / f"trial-{i:04d}" / "metrics.jsonl").read_bytes() for i in (0, 1)}

    second = sweep_cli(*common, "budget.max_trials=4")  # the same sweep, a larger budget
    assert second.returncode == 0, second.stdout + second.stderr
    assert "[trial-0000] finished earlier: skipped" in second.stdout
    assert "[trial-0001] finished earlier: skipped" in second.stdout
    assert "[trial-0002] start" in second.stdout and "[trial-0003] start" in second.stdout
    for i, content in done.items():  # not trained again
        assert (out / f"trial-{i:04d}" / "metrics.jsonl").read_bytes() == content

    results = json.loads((out / "results.json").read_text())
    trials = results["trials"]
    assert sorted(t["trial"] for t in trials) == [f"trial-{i:04d}" for i in range(4)]
    assert all(t["status"] == "finished" and t["epochs"] == 2 for t in trials)
    bests = [t["best"] for t in trials]
    assert bests == sorted(bests, reverse=True) and results["best_trial"] == trials[0]["trial"]
    for t in trials:  # each best is the run's own best epoch, read from its metrics.jsonl
        assert t["best"] == max(e["val_accuracy"] for e in epochs_of(t["run_dir"]))
        test = [json.loads(line) for line in (Path(t["run_dir"]) / "metrics.jsonl").read_text().splitlines()
                if json.loads(line)["event"] == "test"][-1]
        assert t["test"] == {k: v for k, v in test.items() if k.startswith("test_")} and "test_loss" in t["test"]
        assert t["test_accuracy"] == test["test_accuracy"]
        written = yaml.safe_load((Path(t["run_dir"]) / "config.yaml").read_text())
        assert written["wandb"]["group"] == "sweep_digits" and written["wandb"]["name"] == f"sweep_digits-{t['trial']}"
        assert written["optim"]["lr"] == t["params"]["optim.lr"]
    csv_rows = (out / "results.csv").read_text().splitlines()
    assert csv_rows[0].startswith("rank,trial,status,optim.lr,model.hidden_sizes,model.dropout,best val_accuracy")
    assert [row.split(",")[1] for row in csv_rows[1:]] == [t["trial"] for t in trials]
    printed = [line.split()[1] for line in second.stdout.splitlines() if line.split()[:1] in (["1"], ["2"], ["3"], ["4"])]
    assert printed == [t["trial"] for t in trials]  # the printed table, best first

    best = trials[0]
    best_yaml = out / "best.yaml"
    cfg = yaml.safe_load(best_yaml.read_text())
    assert cfg["run"]["dir"] == str(out / "best") and cfg["optim"]["lr"] == best["params"]["optim.lr"]
    rerun = subprocess.run([*DIST_TRAIN, "run", str(best_yaml)], capture_output=True, text=True, timeout=120,
                           cwd=REPO, env=ENV)
    assert rerun.returncode == 0, rerun.stderr
    again, original = epochs_of(out / "best"), epochs_of(best["run_dir"])
    assert [e["val_accuracy"] for e in again] == [e["val_accuracy"] for e in original]
    assert [e["val_loss"] for e in again] == pytest.approx([e["val_loss"] for e in original], rel=1e-6)


def wait_for(condition, what, proc, timeout_s=120):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the sweep ended (exit {proc.returncode}) before {what}:\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout_s}s")
        time.sleep(0.05)


@pytest.mark.slow
def test_stopped_sweep_resumes_its_running_trial_and_keeps_the_failed_one(tmp_path):
    out = tmp_path / "sweep"
    sweep = tmp_path / "grid.yaml"
    # trial 0 diverges (SGD with lr 1e4): a failure, recorded; trial 1 is stopped mid-way and resumed
    sweep.write_text(yaml.safe_dump({
        "base": f"{REPO}/configs/quickstart.yaml", "method": "grid", "out_dir": str(out),
        "overrides": ["optim.name=sgd", "train.epochs=40", "train.global_batch_size=32",
                      "train.stop_check_every_steps=5", *FAST[1:]],
        "space": {"optim.lr": {"choice": [1.0e+4, 0.05]}}}))
    proc = subprocess.Popen([*DIST_TRAIN, "sweep", str(sweep)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=REPO, env=ENV)
    try:
        running = out / "trial-0001" / "metrics.jsonl"
        wait_for(lambda: running.exists() and '"event": "epoch"' in running.read_text(), "an epoch of trial 1", proc)
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 75, stdout
    failed = json.loads((out / "trial-0000" / "trial.json").read_text())
    assert failed["status"] == "failed" and "non-finite loss" in failed["error"], failed
    stopped = json.loads((out / "trial-0001" / "trial.json").read_text())
    assert stopped["status"] == "stopped" and 0 < stopped["epochs"] < 40
    failed_log = (out / "trial-0000" / "trial.log").read_bytes()

    again = sweep_cli(sweep)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "[trial-0000] failed earlier: skipped" in again.stdout and "[trial-0001] resume" in again.stdout
    assert (out / "trial-0000" / "trial.log").read_bytes() == failed_log  # not run again
    records = [json.loads(line) for line in running.read_text().splitlines()]
    resumes = [r for r in records if r["event"] == "resume"]
    assert len(resumes) == 1 and resumes[0]["epoch"] == stopped["epochs"]  # from its checkpoint, not from scratch
    assert [r["epoch"] for r in records if r["event"] == "epoch"] == list(range(40))
    results = json.loads((out / "results.json").read_text())
    assert [(t["trial"], t["status"]) for t in results["trials"]] == [("trial-0001", "finished"), ("trial-0000", "failed")]
    assert [t["params"]["optim.lr"] for t in results["trials"]] == [0.05, 1.0e+4]  # exactly the grid
    assert math.isclose(results["trials"][0]["best"], max(r["val_accuracy"] for r in records if r["event"] == "epoch"))
