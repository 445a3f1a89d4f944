"""Against a real two-node SLURM cluster (slurmctld and slurmd on one network-
namespace host, slurmd on the other, started by tests/e2e/slurm_netns_cluster.sh):
slurm/multi_node.sbatch, rendered by `dist-train slurm submit --nodes 2`, runs
one `dist-train launch` per node meeting through c10d rendezvous; and its
preemption path: USR1 to the batch shell, checkpoint, exit 75, requeue, resume
on the same W&B run, ending with the uninterrupted run's weights."""

import json
import re
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dist_train.checkpoint import find_latest_valid
from tests.conftest import REPO
from tests.e2e.netns import HOST, cannot_make_hosts
from tests.helpers import ENDED, wait_until

SCRIPT = f"{REPO}/tests/e2e/slurm_netns_cluster.sh"
ENV = {**os.environ, "PYTHONPATH": REPO}  # sbatch passes it on to the job: the job runs this checkout
LONG = ["train.epochs=40", "checkpoint.every_steps=50"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = cannot_make_hosts()
    if reason:
        pytest.skip(reason)
    if not shutil.which("slurmctld") or not shutil.which("munged"):
        pytest.skip("SLURM is not installed (.ci/run installs it: bash tests/e2e/slurm_cluster.sh install)")
    state = tmp_path_factory.mktemp("slurm-netns")
    try:
        subprocess.run(["bash", SCRIPT, "start", str(state)], check=True, timeout=120)
        yield state
    finally:  # the daemons, then the hosts with whatever still runs on them (jobs)
        subprocess.run(["bash", SCRIPT, "stop", str(state)], timeout=60)


def on_cluster(state, *command, timeout=60):
    """A command on host 1 (the controller's), against this cluster."""
    return subprocess.run(["bash", SCRIPT, "run", str(state), *command], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def submit(state, run_dir, *overrides):
    proc = on_cluster(state, sys.executable, "-m", "launcher", "slurm", "submit", "configs/cpu_test.yaml",
                      f"run.dir={run_dir}", "wandb.mode=offline", *overrides, "--nodes", "2", "--ntasks", "2",
                      "--time", "00:15:00")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()[2]  # "submitted job ID (...)"


def job_field(state, job, field):
    for token in on_cluster(state, "scontrol", "show", "job", job).stdout.split():
        if token.startswith(field + "="):
            return token.split("=", 1)[1]
    return None


def log(run_dir, job):
    return (Path(run_dir) / "slurm" / f"cpu_test-{job}.out").read_text()


def metrics(run_dir):
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.timeout(300)
def test_multi_node_template_trains_across_two_hosts(cluster, tmp_path):
    job = submit(cluster, tmp_path)
    wait_until(lambda: job_field(cluster, job, "JobState") in ENDED, 240, "the job to end")
    assert job_field(cluster, job, "JobState") == "COMPLETED", log(tmp_path, job)
    assert job_field(cluster, job, "NodeList") == f"{HOST[1][:-1]}[1-2]"  # both hosts
    events = metrics(tmp_path)
    assert events[0]["world_size"] == 2 and events[0]["strategy"] == "ddp"  # one worker per node, met by rendezvous
    assert [e for e in events if e["event"] == "test"][0]["test_accuracy"] >= 0.9


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The same job as 2 workers on one machine, without SLURM: 2 nodes of 1
    worker end bit-equal to it (tests/e2e/test_multinode.py)."""
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    proc = subprocess.run([sys.executable, "-m", "launcher", "launch", "--nproc-per-node", "2", "configs/cpu_test.yaml",
                           *LONG, "wandb.mode=disabled", f"run.dir={run_dir}"], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**ENV, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return torch.load(find_latest_valid(run_dir).path / "model.pt", weights_only=True)


@pytest.mark.timeout(420)
def test_multi_node_job_preempted_requeues_and_resumes_with_the_uninterrupted_weights(cluster, uninterrupted, tmp_path):
    job = submit(cluster, tmp_path, *LONG)
    wait_until(lambda: any(e.get("step", 0) >= 120 for e in metrics(tmp_path)), 240, "step 120")
    # SLURM's preemption notice, as --signal=B:USR1 sends it: to the batch shell
    assert on_cluster(cluster, "scancel", "--signal=USR1", "--batch", job).returncode == 0
    wait_until(lambda: job_field(cluster, job, "Restarts") == "1", 120, "the job to requeue itself")
    # shorten SLURM's 120 s hold of a requeued job (not to nothing: see test_slurm_cluster.py)
    on_cluster(cluster, "scontrol", "update", f"JobId={job}", "StartTime=now+10")
    wait_until(lambda: job_field(cluster, job, "Restarts") == "1" and job_field(cluster, job, "JobState") in ENDED,
               300, "the requeued job to end")
    text = log(tmp_path, job)
    assert job_field(cluster, job, "JobState") == "COMPLETED", text
    # each node's launcher, not killed by USR1, reports the checkpoint its workers saved
    assert len(re.findall(r"dist-train launch: stopped by SIGUSR1; checkpoint saved at step \d+", text)) == 2, text
    events = metrics(tmp_path)
    assert [e["signal"] for e in events if e["event"] == "stop"] == ["SIGUSR1"]
    assert sum(e["event"] == "resume" for e in events) == 1
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and len({r.name.rsplit("-", 1)[1] for r in runs}) == 1  # the same W&B run id
    got = torch.load(find_latest_valid(tmp_path).path / "model.pt", weights_only=True)
    for key, value in uninterrupted.items():
        assert torch.equal(value, got[key]), key
