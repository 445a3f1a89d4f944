"""Surviving faults through the command line, with real processes and real
signals: kill -9 of a worker under the elastic launcher, a lost peer."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import REPO
from tests.helpers import CPU_JOB, final_weights, finish, launch
from tests.multiproc import free_port, wait_for_step, worker_pids


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    code, out = finish(launch(run_dir))
    assert code == 0, out
    return final_weights(run_dir)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_worker_killed_is_restarted_and_ends_with_the_uninterrupted_weights(tmp_path, uninterrupted, seed):
    proc = launch(tmp_path, restarts=1)
    step = random.Random(seed).randrange(8, 150)
    wait_for_step(tmp_path, step, proc)
    # this launcher's workers only: `pgrep -f launcher.worker` would also find
    # (and kill) the workers of other test runs on the same machine
    workers = worker_pids(proc.pid)
    assert workers, "no worker processes found"
    os.kill(random.Random(seed).choice(workers), signal.SIGKILL)
    code, out = finish(proc)
    assert code == 0, out
    assert out.count("resuming from") >= 1
    for key, value in uninterrupted.items():
        assert torch.equal(value, final_weights(tmp_path)[key]), key


@pytest.mark.slow
def test_a_lost_peer_ends_the_job_with_a_clear_message_instead_of_hanging(tmp_path):
    port = free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-m", "launcher", "run", *CPU_JOB, "train.epochs=1000",
                                       "dist.timeout_s=15", f"run.dir={tmp_path}"],
                                      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    wait_for_step(tmp_path, 30, procs[0])
    procs[1].kill()
    start = time.monotonic()
    code, out = finish(procs[0], timeout=120)
    procs[1].wait()
    assert time.monotonic() - start < 60  # well within the timeout plus start-up, not torch's 30 minutes
    assert code == 1, out
    assert "lost contact with another worker" in out and "resume from the last checkpoint" in out
    assert "no answer within 5s from rank 1 on" in out  # the lost peer, named
