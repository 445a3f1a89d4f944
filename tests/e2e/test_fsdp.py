"""strategy.name=fsdp through the real launcher: a mistake in its keys is one
line before any worker starts; kill -9 in the middle of a DCP save leaves the
newest complete checkpoint, from which the same command resumes."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from dist_train.checkpoint import MANIFEST, find_latest_valid, list_checkpoints
from tests.conftest import REPO
from tests.helpers import Job
from tests.multiproc import kill_tree

pytestmark = pytest.mark.slow

JOB = ["configs/cpu_test.yaml", "strategy.name=fsdp", "wandb.mode=disabled"]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "launcher", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("extra, says", [
    (["strategy.fsdp_modules=[Block]"], "config key 'strategy.fsdp_modules': 'Block' is not a module class of the "
                                        "model (hint: its module classes with parameters are: Linear, MLP, Sequential)"),
    (["strategy.zero_stage=3"], "config key 'strategy.zero_stage': is set but strategy.name is 'fsdp'"),
    (["strategy.offload_params=cpu", "dist.device=cpu"], "cpu offload with fsdp needs a GPU"),
])
def test_an_fsdp_mistake_is_one_line_before_any_worker_starts(tmp_path, extra, says):
    start = time.monotonic()
    proc = cli("launch", "--nproc-per-node", "2", *JOB, *extra, f"run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == "" and proc.stderr.strip().count("\n") == 0 and says in proc.stderr, proc.stderr
    assert time.monotonic() - start < 15 and not (tmp_path / "run").exists()


def test_kill_9_during_a_dcp_save_keeps_the_newest_complete_checkpoint_and_the_job_resumes(tmp_path):
    run_dir = tmp_path / "run"
    # a wide network: each save writes about 10 MB of shards, long enough to be caught in the middle of one
    args = [*JOB, "model.hidden_sizes=[1024,1024]", "checkpoint.every_steps=2", "train.epochs=4", f"run.dir={run_dir}"]
    for _ in range(3):  # a save that completes between the look and the kill is no catch: again, resumed
        job = Job(args)
        caught = None
        deadline = time.monotonic() + 120
        while caught is None and time.monotonic() < deadline and job.poll() is None:
            for path in list_checkpoints(run_dir):
                if (path / "dcp").is_dir() and any((path / "dcp").iterdir()) and not (path / MANIFEST).exists() \
                        and find_latest_valid(run_dir, warn=lambda m: None) is not None:
                    kill_tree(job.pid)  # kill -9: the launcher and every worker, in the middle of this save
                    caught = path
                    break
            time.sleep(0.002)
        job.proc.wait(timeout=30)
        assert caught is not None, "no save was caught in the middle: " + job.output
        if not (caught / MANIFEST).exists():
            break
    assert not (caught / MANIFEST).exists(), "each save was published before the kill landed"
    newest = find_latest_valid(run_dir, warn=lambda m: None)
    assert newest is not None and newest.path != caught and newest.global_step < int(caught.name.split("-")[1])
    code, out = Job(args).finish()
    assert code == 0, out
    assert f"resuming from {newest.path}" in out and f"skipping checkpoint {caught}" in out
