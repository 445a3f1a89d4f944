"""Every way a job ends or restarts keeps the work, with real launchers and
real signals: SIGTERM to the launcher, SIGINT to its process group (what a
terminal sends on Ctrl-C) and SIGUSR1, for in-memory data and for shards read
by 0 and 2 loader processes per worker; a second Ctrl-C; a second job on a run
directory in use; a dead job's lock; a script using the Python API."""

import os
import random
import re
import signal
import subprocess
import time

import pytest
import torch

from dist_train.checkpoint import find_latest_valid
from dist_train.data.prepare import PrepareOptions, prepare
from tests.conftest import REPO
from tests.helpers import Job
from tests.multiproc import descendants, kill_tree, wait_for_step

pytestmark = pytest.mark.slow

# 420 training samples / 32 = 14 steps an epoch; a stop is checked every step
BASE = ["configs/cpu_test.yaml", "data.num_features=12", "data.num_classes=3", "train.epochs=4",
        "train.stop_check_every_steps=1", "checkpoint.every_steps=9", "model.dropout=0.2", "wandb.mode=disabled"]
DATA = {"memory": [], "shards-0": ["data.source=shards", "data.loader_workers=0"],
        "shards-2": ["data.source=shards", "data.loader_workers=2"]}
SIGNALS = {"SIGTERM": "launcher", "SIGINT": "group", "SIGUSR1": "launcher"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    path = tmp_path_factory.mktemp("shards") / "synthetic"
    prepare("synthetic", PrepareOptions(out=path, num_samples=600, input_shape=(12,), num_classes=3, train_shards=4))
    return str(path)


def job(data, shards, run_dir, *extra):
    paths = [f"data.path={shards}"] if data != "memory" else []
    return [*BASE, *DATA[data], *paths, f"run.dir={run_dir}", *extra]


def launch(args, restarts=0):
    return Job(args, restarts)


def finish(job_, timeout=240):
    return job_.finish(timeout)


def weights(run_dir):
    return torch.load(find_latest_valid(run_dir).path / "model.pt", weights_only=True)


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key  # atol = 0


LONG = ["train.epochs=10"]  # long enough for a second job to start while the first trains


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, shards):
    found = {}
    for name, data, extra in [*((d, d, []) for d in DATA), ("memory-long", "memory", LONG)]:
        run_dir = tmp_path_factory.mktemp(f"whole-{name}") / "run"
        code, out = finish(launch(job(data, shards, run_dir, *extra)))
        assert code == 0, out
        found[name] = weights(run_dir)
    return found


def send(job_, name):
    sig = getattr(signal, name)
    if SIGNALS[name] == "group":
        os.killpg(job_.pid, sig)  # the launcher's whole process group, as a terminal does
    else:
        os.kill(job_.pid, sig)


@pytest.mark.parametrize("data", list(DATA))
@pytest.mark.parametrize("signame", list(SIGNALS))
def test_a_stop_saves_exits_75_and_the_same_command_resumes_exactly(tmp_path, shards, uninterrupted, data, signame):
    args = job(data, shards, tmp_path / "run")
    proc = launch(args)
    step = random.Random(f"{data}-{signame}").randrange(3, 45)
    wait_for_step(tmp_path / "run", step, proc)
    send(proc, signame)
    code, out = finish(proc)
    assert code == 75, out
    saved = re.search(r"stopped by (\w+); checkpoint saved at step (\d+)", out)
    assert saved and saved.group(1) == signame, out
    assert int(saved.group(2)) == find_latest_valid(tmp_path / "run").global_step >= step
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    # dist-train's own lines only: one saying the signal is passed on, none of torch's agent's log lines
    assert not re.search(r"^[WE]\d{4} ", out, re.M), out
    assert out.count(f"dist-train launch: {signame}: the workers save a checkpoint") == 1, out
    code, out = finish(launch(args))
    assert code == 0, out
    assert f"resuming from {tmp_path / 'run'}/checkpoints/step-{int(saved.group(2)):08d}" in out
    assert "Traceback" not in out
    assert_same_weights(weights(tmp_path / "run"), uninterrupted[data])


def test_a_second_ctrl_c_stops_at_once_without_tracebacks_and_keeps_the_last_checkpoint(tmp_path, shards):
    # a slow job: stop checks far apart, so the first Ctrl-C is still pending when the second comes
    args = job("shards-2", shards, tmp_path / "run", "train.epochs=400", "train.stop_check_every_steps=100000",
               "checkpoint.every_steps=5")
    proc = launch(args)
    wait_for_step(tmp_path / "run", 12, proc)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait_for_output("dist-train launch: SIGINT: ")  # the launcher has taken the first one
    workers = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    start = time.monotonic()
    code, out = finish(proc, timeout=60)
    assert time.monotonic() - start < 20  # not torch's 30 s shutdown wait
    assert code == 128 + signal.SIGINT, out
    assert "SIGINT again: the workers were stopped at once without saving" in out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    for pid in workers:  # no worker or loader process left behind
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    assert find_latest_valid(tmp_path / "run") is not None  # the newest complete checkpoint is intact


def test_a_second_launch_on_a_run_directory_in_use_is_refused_and_the_first_ends_exact(tmp_path, shards,
                                                                                           uninterrupted):
    args = job("memory", shards, tmp_path / "run", *LONG)
    first = launch(args)
    wait_for_step(tmp_path / "run", 5, first)
    # the first job paused (alive, holding its lock) while the second starts: on a loaded machine it could
    # otherwise finish its 140 steps before the second one looks
    paused = [first.pid, *descendants(first.pid)]
    for pid in paused:
        os.kill(pid, signal.SIGSTOP)
    start = time.monotonic()
    try:
        code, out = finish(launch(args), timeout=60)
    finally:
        for pid in paused:
            os.kill(pid, signal.SIGCONT)
    assert time.monotonic() - start < 15
    assert code == 2, out
    assert re.search(rf"run directory {tmp_path / 'run'} is in use by dist-train launch \(pid {first.pid} on "
                     r"\S+, since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\)", out), out
    assert out.strip().count("\n") == 0  # one line
    code, out = finish(first)
    assert code == 0, out
    assert_same_weights(weights(tmp_path / "run"), uninterrupted["memory-long"])


def test_a_dead_jobs_lock_is_taken_over(tmp_path, shards, uninterrupted):
    args = job("memory", shards, tmp_path / "run", *LONG)
    first = launch(args)
    wait_for_step(tmp_path / "run", 20, first)
    kill_tree(first.pid)  # kill -9: launcher and workers, nobody cleans up
    first.proc.wait()
    assert (tmp_path / ".run.lock").exists()  # left behind, naming a dead pid
    code, out = finish(launch(args))
    assert code == 0, out
    assert "resuming from" in out
    assert not (tmp_path / ".run.lock").exists()
    assert_same_weights(weights(tmp_path / "run"), uninterrupted["memory-long"])


SCRIPT = ["examples/python_api/train.py", "train.stop_check_every_steps=1", "checkpoint.every_steps=7",
          "wandb.mode=disabled"]


def test_a_script_launched_with_the_python_api_stops_resumes_and_ends_exact(tmp_path):
    whole = tmp_path / "whole"
    code, out = finish(launch([*SCRIPT, f"run.dir={whole}"]))
    assert code == 0, out
    proc = launch([*SCRIPT, f"run.dir={tmp_path / 'run'}"])
    wait_for_step(tmp_path / "run", 30, proc)
    os.kill(proc.pid, signal.SIGTERM)
    code, out = finish(proc)
    assert code == 75, out
    said = re.findall(r"^dist-train: stopped on request \((\w+)\); checkpoint saved at step (\d+)", out, re.M)
    assert said and said[0][0] == "SIGTERM", out
    # one line says it: not again by the other worker or by the launcher
    assert len([line for line in out.splitlines() if "checkpoint saved" in line]) == 1, out
    assert int(said[0][1]) == find_latest_valid(tmp_path / "run").global_step >= 30
    assert "Traceback" not in out
    code, out = finish(launch([*SCRIPT, f"run.dir={tmp_path / 'run'}"]))
    assert code == 0, out
    assert f"resuming from {tmp_path / 'run'}/checkpoints/step-{int(said[0][1]):08d}" in out
    assert_same_weights(weights(tmp_path / "run"), weights(whole))


def test_plain_batch_norm_under_ddp_resumes_with_the_same_metrics_after_ctrl_c(tmp_path):
    """Each rank's plain batch norm keeps its own running statistics between
    DDP's copies of rank 0's; evaluation uses rank 0's (what the checkpoint
    holds) on every rank, so a resumed run logs what the uninterrupted one did."""
    from tests.helpers import events

    bn = ["model.batch_norm=true", "model.sync_batchnorm=false", "model.hidden_sizes=[16,16]"]
    code, out = finish(launch(job("memory", None, tmp_path / "whole", *bn)))
    assert code == 0, out
    proc = launch(job("memory", None, tmp_path / "run", *bn))
    wait_for_step(tmp_path / "run", random.Random("bn").randrange(16, 40), proc)
    os.killpg(proc.pid, signal.SIGINT)
    code, out = finish(proc)
    assert code == 75, out
    code, out = finish(launch(job("memory", None, tmp_path / "run", *bn)))
    assert code == 0 and "resuming from" in out, out
    assert events(tmp_path / "run") == events(tmp_path / "whole")
    assert_same_weights(weights(tmp_path / "run"), weights(tmp_path / "whole"))
