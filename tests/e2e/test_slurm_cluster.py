"""Against a real SLURM (munge, slurmctld, slurmd on this machine, started by
tests/e2e/slurm_cluster.sh): a 2-task CPU job through `dist-train slurm
submit`, and preemption: signalled, saved, requeued, resumed, same weights."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dist_train.checkpoint import find_latest_valid
from tests.conftest import REPO
from tests.helpers import ENDED, wait_until


SCRIPT = f"{REPO}/tests/e2e/slurm_cluster.sh"


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("starting SLURM daemons needs root")
    if not shutil.which("slurmctld") or not shutil.which("munged"):
        pytest.skip("SLURM is not installed (.ci/run installs it: bash tests/e2e/slurm_cluster.sh install)")
    state = tmp_path_factory.mktemp("slurm")
    subprocess.run(["bash", SCRIPT, "start", str(state)], check=True, timeout=120)
    yield state
    subprocess.run(["scancel", "--user", "root"], timeout=30)
    subprocess.run(["bash", SCRIPT, "stop", str(state)], timeout=60)


def submit(run_dir, *overrides):
    proc = subprocess.run([sys.executable, "-m", "launcher", "slurm", "submit", "configs/cpu_test.yaml",
                           f"run.dir={run_dir}", "wandb.mode=offline", *overrides, "--ntasks", "2",
                           "--time", "00:15:00"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "logs:" in proc.stdout
    return proc.stdout.split()[2]  # "submitted job ID (...)"


def job_field(job_id, field):
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=30).stdout
    for token in out.split():
        if token.startswith(field + "="):
            return token.split("=", 1)[1]
    return None


def metrics(run_dir):
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_two_task_job_trains_with_ranks_from_srun(slurm, tmp_path):
    job = submit(tmp_path)
    wait_until(lambda: job_field(job, "JobState") in ENDED, 240, "the job to end")
    log = (tmp_path / "slurm" / f"cpu_test-{job}.out").read_text()
    assert job_field(job, "JobState") == "COMPLETED", log
    events = metrics(tmp_path)
    assert events[0]["world_size"] == 2 and events[0]["strategy"] == "ddp"  # SLURM_PROCID/NTASKS -> RANK/WORLD_SIZE
    assert [e for e in events if e["event"] == "test"][0]["test_accuracy"] >= 0.9


def test_preempted_job_requeues_resumes_and_ends_with_the_uninterrupted_weights(slurm, tmp_path):
    long = ["train.epochs=40", "checkpoint.every_steps=50"]
    whole = submit(tmp_path / "whole", *long)
    wait_until(lambda: job_field(whole, "JobState") in ENDED, 400, "the uninterrupted job")
    assert job_field(whole, "JobState") == "COMPLETED"
    job = submit(tmp_path / "preempted", *long)
    wait_until(lambda: any(e.get("step", 0) >= 120 for e in metrics(tmp_path / "preempted")), 240, "step 120")
    # SLURM's preemption notice, as --signal=B:USR1 sends it: to the batch shell
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True, timeout=30)
    wait_until(lambda: job_field(job, "Restarts") == "1", 120, "the job to requeue itself")
    # shorten SLURM's 120 s hold of a requeued job, but not to nothing: a restart
    # within a few seconds meets the old incarnation's revoked credential
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now+10"], check=True, timeout=30)
    wait_until(lambda: job_field(job, "Restarts") == "1" and job_field(job, "JobState") in ENDED, 400,
               "the requeued job to end")
    assert job_field(job, "JobState") == "COMPLETED", (tmp_path / "preempted" / "slurm" / f"cpu_test-{job}.out").read_text()
    events = metrics(tmp_path / "preempted")
    assert [e["signal"] for e in events if e["event"] == "stop"] == ["SIGUSR1"]
    assert sum(e["event"] == "resume" for e in events) == 1
    runs = sorted((tmp_path / "preempted" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and len({r.name.rsplit("-", 1)[1] for r in runs}) == 1  # the same W&B run id
    expected = torch.load(find_latest_valid(tmp_path / "whole").path / "model.pt", weights_only=True)
    got = torch.load(find_latest_valid(tmp_path / "preempted").path / "model.pt", weights_only=True)
    for key, value in expected.items():
        assert torch.equal(value, got[key]), key


def test_a_stalled_job_requeues_itself_and_ends_with_the_uninterrupted_weights(slurm, tmp_path):
    """A rank asleep in a step (once): the watchdog ends every task with exit
    status 3, the batch script requeues the job as a failure, and the job
    resumes from the newest checkpoint."""
    faulty = ["model.hidden_sizes=[64]", f"model.class_path={REPO}/tests/user_project/stalls.py:Faulty",
              "dist.hang_timeout_s=4", "checkpoint.every_steps=10", "train.stop_check_every_steps=1"]
    whole = submit(tmp_path / "whole", *faulty)
    job = submit(tmp_path / "stalled", *faulty, f"model.init_args={{once: {tmp_path / 'once'}}}")
    wait_until(lambda: job_field(job, "Restarts") == "1", 240, "the stalled job to requeue itself")
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now+10"], check=True, timeout=30)
    wait_until(lambda: job_field(whole, "JobState") in ENDED, 240, "the uninterrupted job")
    wait_until(lambda: job_field(job, "Restarts") == "1" and job_field(job, "JobState") in ENDED, 400,
               "the requeued job to end")
    log = (tmp_path / "stalled" / "slurm" / f"cpu_test-{job}.out").read_text()
    assert job_field(job, "JobState") == "COMPLETED" and job_field(whole, "JobState") == "COMPLETED", log
    assert "rank 1 is missing from DDP's gradient all-reduce" in log and "stalls.py:" in log
    assert sum(e["event"] == "resume" for e in metrics(tmp_path / "stalled")) == 1
    expected = torch.load(find_latest_valid(tmp_path / "whole").path / "model.pt", weights_only=True)
    got = torch.load(find_latest_valid(tmp_path / "stalled").path / "model.pt", weights_only=True)
    for key, value in expected.items():
        assert torch.equal(value, got[key]), key


def test_a_script_calling_dist_train_fit_under_srun_is_one_job_of_two_ranks(slurm, tmp_path):
    """dist_train.fit sets its process up as `dist-train run` does: srun's two
    tasks become ranks 0 and 1 of one job (not two lone processes)."""
    run_dir = tmp_path / "run"
    wrap = (f"cd {REPO} && OMP_NUM_THREADS=1 srun {sys.executable} examples/python_api/train.py "
            f"run.dir={run_dir} train.epochs=2 wandb.mode=disabled")
    proc = subprocess.run(["sbatch", "--parsable", "--ntasks=2", "--time=00:10:00", f"--output={tmp_path}/out.log",
                           f"--wrap={wrap}"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": REPO})
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip().split(";")[0]
    wait_until(lambda: job_field(job, "JobState") in ENDED, 240, "the job to end")
    log = (tmp_path / "out.log").read_text()
    assert job_field(job, "JobState") == "COMPLETED", log
    starts = [e for e in metrics(run_dir) if e["event"] == "start"]
    assert len(starts) == 1 and starts[0]["world_size"] == 2 and starts[0]["strategy"] == "ddp", log
