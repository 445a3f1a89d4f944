"""Two hosts on this machine: network namespaces joined by a veth pair
(tests/e2e/netns_hosts.sh), each with its own address and hostname, sharing the
file system (so one run directory is the jobs' shared storage). Against them:
a 2-node job through c10d rendezvous ends with the weights of the same job on
one node; a worker killed on one node is restarted on both and resumes from
the shared checkpoint; a link taken down (and kept down) ends the job on both
nodes within the timeout, naming the lost peer, without hanging."""

import os
import random
import subprocess
import sys
import time

import pytest
import torch

from dist_train.checkpoint import find_latest_valid
from tests.conftest import REPO
from tests.multiproc import kill_tree, wait_for_step, worker_pids
from tests.e2e.netns import ADDR, HOST, SCRIPT, cannot_make_hosts

CPU = ["configs/cpu_test.yaml", "train.epochs=12", "checkpoint.every_steps=5", "checkpoint.keep_last=3",
       "train.stop_check_every_steps=1", "model.dropout=0.2", "wandb.mode=disabled"]
ENV = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hosts():
    reason = cannot_make_hosts()
    if reason:
        pytest.skip(reason)
    try:
        subprocess.run(["bash", SCRIPT, "up"], check=True, timeout=60)
        yield
    finally:  # also kills whatever still runs on the hosts
        subprocess.run(["bash", SCRIPT, "down"], timeout=60)


@pytest.fixture
def nodes(hosts, tmp_path):
    """Start `dist-train launch` on host 1 and 2; killed (with their workers) and
    the link restored after the test, whatever happened."""
    started: list[subprocess.Popen] = []

    def start(run_dir, *extra, nproc=1, restarts=0, port=29400):
        procs = []
        for n in (1, 2):
            log = open(tmp_path / f"node{n}.log", "w")
            procs.append(subprocess.Popen(
                ["bash", SCRIPT, "exec", str(n), sys.executable, "-m", "launcher", "launch", "--nnodes", "2",
                 "--nproc-per-node", str(nproc), "--rdzv-endpoint", f"{ADDR[1]}:{port}", "--rdzv-id", "test",
                 "--max-restarts", str(restarts), *CPU, f"run.dir={run_dir}", *extra],
                cwd=REPO, env=ENV, stdout=log, stderr=subprocess.STDOUT))
            log.close()
        started.extend(procs)
        return procs

    yield start
    for proc in started:
        kill_tree(proc.pid)
        proc.wait(timeout=30)
    subprocess.run(["bash", SCRIPT, "link", "2", "up"], timeout=30)


def output(tmp_path, n):
    return (tmp_path / f"node{n}.log").read_text()


def wait_all(procs, timeout):
    """Exit codes of every process, and when each ended (seconds from now)."""
    start, ended = time.monotonic(), {}
    while len(ended) < len(procs):
        if time.monotonic() - start > timeout:
            raise AssertionError(f"still running after {timeout}s: nodes {[i + 1 for i in range(len(procs)) if i not in ended]}")
        for i, proc in enumerate(procs):
            if i not in ended and proc.poll() is not None:
                ended[i] = (proc.returncode, time.monotonic() - start)
        time.sleep(0.1)
    return [ended[i] for i in range(len(procs))]


def weights(run_dir):
    return torch.load(find_latest_valid(run_dir).path / "model.pt", weights_only=True)


def assert_same_weights(expected, got):
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        assert torch.equal(value, got[key]), key  # bit-equal, not merely close


@pytest.fixture(scope="module")
def one_node(tmp_path_factory):
    """The same job as N workers on one node: the reference (each N run once)."""
    done = {}

    def weights_of(workers):
        if workers not in done:
            run_dir = tmp_path_factory.mktemp(f"one-node-{workers}") / "run"
            proc = subprocess.run([sys.executable, "-m", "launcher", "launch", "--nproc-per-node", str(workers), *CPU,
                                   f"run.dir={run_dir}"], cwd=REPO, env=ENV, capture_output=True, text=True,
                                  timeout=300)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            done[workers] = weights(run_dir)
        return done[workers]

    return weights_of


@pytest.mark.timeout(300)
@pytest.mark.parametrize("per_node", [1, 2])
def test_two_nodes_end_with_the_weights_of_one_node(nodes, one_node, tmp_path, per_node):
    procs = nodes(tmp_path / "run", nproc=per_node)
    (code1, _), (code2, _) = wait_all(procs, timeout=240)
    assert (code1, code2) == (0, 0), output(tmp_path, 1) + output(tmp_path, 2)
    assert f"world_size={2 * per_node}" in output(tmp_path, 1) + output(tmp_path, 2)
    assert_same_weights(one_node(2 * per_node), weights(tmp_path / "run"))


@pytest.mark.timeout(300)
def test_a_worker_killed_on_one_node_is_restarted_and_resumes_from_the_shared_checkpoint(nodes, one_node, tmp_path):
    procs = nodes(tmp_path / "run", restarts=1)
    wait_for_step(tmp_path / "run", random.Random(7).randrange(20, 140), procs)
    workers = worker_pids(procs[1].pid)  # node 2's
    assert len(workers) == 1, workers
    os.kill(workers[0], 9)
    (code1, _), (code2, _) = wait_all(procs, timeout=240)
    both = output(tmp_path, 1) + output(tmp_path, 2)
    assert (code1, code2) == (0, 0), both
    assert "resuming from" in both
    assert_same_weights(one_node(2), weights(tmp_path / "run"))  # as if nothing had happened


@pytest.mark.timeout(240)
def test_a_link_kept_down_ends_the_job_within_the_bound_naming_the_lost_peer(nodes, tmp_path):
    """The stall watchdog of each side finds no progress; node 1 (which holds the
    job's store) names the rank that stopped answering and where it ran, node 2
    says it cannot reach the store; both end with exit status 3, not hanging."""
    bound = 5
    procs = nodes(tmp_path / "run", "train.epochs=1000", f"dist.hang_timeout_s={bound}")
    wait_for_step(tmp_path / "run", 30, procs)
    subprocess.run(["bash", SCRIPT, "link", "2", "down"], check=True, timeout=30)
    (code1, took1), (code2, took2) = wait_all(procs, timeout=150)
    print(f"link down -> node 1 exited after {took1:.1f}s, node 2 after {took2:.1f}s (dist.hang_timeout_s={bound})")
    one, two = output(tmp_path, 1), output(tmp_path, 2)
    assert (code1, code2) == (3, 3), one + two
    # the bound, a 5 s roll call, 5 s for the reports, and on node 2 the launcher's 5 s look at the store
    assert took1 < bound + 20 and took2 < bound + 25, (took1, took2)
    assert f"rank 1 on {HOST[2]} ({ADDR[2]}) stopped answering" in one
    assert "cannot reach the job's store" in two
    summary = (tmp_path / "run" / "hang" / "summary.txt").read_text()  # the shared file system
    assert f"rank 1 on {HOST[2]} ({ADDR[2]}) (pid" in summary and "did not answer the roll call" in summary


@pytest.mark.timeout(300)
def test_a_link_that_comes_back_is_survived_by_a_restart_that_resumes_exactly(nodes, one_node, tmp_path):
    procs = nodes(tmp_path / "run", "dist.hang_timeout_s=5", restarts=1)
    wait_for_step(tmp_path / "run", 30, procs)
    subprocess.run(["bash", SCRIPT, "link", "2", "down"], check=True, timeout=30)
    # node 2 finds the store cut by its watchdog or, on a loaded machine, by its collective's timeout (60 s)
    deadline = time.monotonic() + 120
    while not (f"rank 1 on {HOST[2]}" in output(tmp_path, 1) and "the job's store" in output(tmp_path, 2)):
        assert time.monotonic() < deadline, output(tmp_path, 1) + output(tmp_path, 2)
        time.sleep(0.2)
    subprocess.run(["bash", SCRIPT, "link", "2", "up"], check=True, timeout=30)
    (code1, _), (code2, _) = wait_all(procs, timeout=240)
    both = output(tmp_path, 1) + output(tmp_path, 2)
    assert (code1, code2) == (0, 0), both
    assert "resuming from" in both
    assert_same_weights(one_node(2), weights(tmp_path / "run"))
