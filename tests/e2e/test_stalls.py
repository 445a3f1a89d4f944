"""A job never hangs silently (real launchers, real faults): a rank asleep in
a step, a rank stopped with SIGSTOP, a collective only one rank calls, an
evaluation one rank skips, a checkpoint write that stalls on one rank. Each
is reported within the bound (dist.hang_timeout_s, a few seconds here) plus
SLACK, the summary names the right rank and file:line, the job ends with exit
status 3, the newest complete checkpoint is intact, no process is left, and
the same command (or --max-restarts) ends with the uninterrupted run's
weights. Also: each timeout honoured, and SIGTERM to one worker exits 75."""

import os
import random
import re
import signal
import time
from pathlib import Path

import pytest
import torch

from dist_train.checkpoint import find_latest_valid, verify_checkpoint
from tests.conftest import REPO
from tests.helpers import Job
from tests.multiproc import descendants, wait_for_step, worker_pids

pytestmark = pytest.mark.slow

BOUND = 4  # dist.hang_timeout_s in these tests
# after the bound: the watchdog's next look (<= 0.4 s), the roll call (up to 5 s when a rank is missing), the
# reports of the others (up to 5 s), the exit; and the launcher noticing (0.1 s), on a busy 2-core machine
SLACK = 15
QUICK = ["configs/quickstart.yaml", "wandb.mode=disabled", "run.progress=false", "train.epochs=3",
         "checkpoint.every_steps=10", f"dist.hang_timeout_s={BOUND}"]
FAULTY = ["model.hidden_sizes=[64]", "model.dropout=0", f"model.class_path={REPO}/tests/user_project/stalls.py:Faulty"]
SCRIPT = f"{REPO}/tests/user_project/stall_script.py"


def line_of(path, text):
    return next(i for i, line in enumerate(Path(path).read_text().splitlines(), 1) if text in line)


def fired_at(once):
    """When a fault fired (the monotonic clock the fault wrote, system-wide)."""
    return float(Path(once).read_text().split()[0])


def weights(run_dir):
    return torch.load(find_latest_valid(run_dir).path / "model.pt", weights_only=True)


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key  # atol = 0


def assert_nothing_left(job):
    """No worker, reader or writer process below the launcher (waited for: a data
    loader process notices its parent is gone within 5 s)."""
    deadline = time.monotonic() + 15
    while descendants(job.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert descendants(job.pid) == []


def assert_stalled(job, run_dir, since, *says, bound=BOUND):
    code, out = job.finish(timeout=120)
    assert code == 3, out
    summary = (Path(run_dir) / "hang" / "summary.txt").read_text()
    for text in says:
        assert text in summary, f"{text!r} not in:\n{summary}"
    reported = job.when("dist-train: the ")  # the summary's first line
    assert reported is not None and reported - since <= bound + SLACK, (reported - since, out)
    assert "Traceback" not in out
    assert out.count("dist-train: the job stalled") + out.count("dist-train: the ranks diverged") == 1, out
    newest = find_latest_valid(run_dir)
    assert newest is not None and str(newest.path) in summary
    assert_nothing_left(job)
    return summary


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The same jobs without a fault: the weights a stalled and resumed job must end with."""
    found = {}

    def weights_of(name, args):
        if name not in found:
            run_dir = tmp_path_factory.mktemp(f"whole-{name}") / "run"
            code, out = Job([*args, f"run.dir={run_dir}"]).finish()
            assert code == 0, out
            found[name] = weights(run_dir)
        return found[name]

    return weights_of


def test_a_rank_asleep_in_a_step_is_named_with_its_line_and_the_job_resumes_exactly(tmp_path, uninterrupted):
    once, run_dir = tmp_path / "once", tmp_path / "run"
    args = [*QUICK, *FAULTY, f"model.init_args={{once: {once}}}", f"run.dir={run_dir}"]
    job = Job(args)
    wait_for_step(run_dir, 29, job)
    while not once.exists():
        assert job.poll() is None, job.output
        time.sleep(0.05)
    summary = assert_stalled(job, run_dir, fired_at(once), "rank 1 is missing from DDP's gradient all-reduce",
                             f"stalls.py:{line_of(REPO + '/tests/user_project/stalls.py', 'time.sleep(600)')}")
    assert "rank 0 (" in summary and "in DDP's gradient all-reduce" in summary
    assert (run_dir / "hang" / "rank-1.txt").read_text().count("time.sleep(600)") == 1  # its stack, all threads
    code, out = Job(args).finish()
    assert code == 0 and "resuming from" in out, out
    assert_same_weights(weights(run_dir), uninterrupted("faulty", [*QUICK, *FAULTY]))


def test_a_rank_stopped_with_sigstop_is_named_and_a_restart_resumes_exactly(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    job = Job([*QUICK, f"run.dir={run_dir}"], restarts=1)
    wait_for_step(run_dir, random.Random("stop").randrange(25, 40), job)
    rank1 = worker_pids(job.pid)[1]
    os.kill(rank1, signal.SIGSTOP)
    stopped_at = time.monotonic()
    code, out = job.finish(timeout=180)
    assert code == 0, out  # restarted once, resumed, finished
    reported = job.when("stopped answering: its process is stopped")
    assert reported is not None and reported - stopped_at <= BOUND + SLACK, out
    assert "resuming from" in out and "Traceback" not in out
    assert not os.path.exists(f"/proc/{rank1}")  # ended, not left stopped
    assert_same_weights(weights(run_dir), uninterrupted("quick", QUICK))


def test_a_collective_only_one_rank_calls_is_named_with_both_call_sites(tmp_path, uninterrupted):
    once, run_dir = tmp_path / "once", tmp_path / "run"
    args = [*QUICK, *FAULTY, f"model.init_args={{once: {once}, fault: all_reduce, rank: 0}}",
            "dist.check_collectives=true", f"run.dir={run_dir}"]
    job = Job(args)
    wait_for_step(run_dir, 29, job)
    while not once.exists():
        assert job.poll() is None, job.output
        time.sleep(0.05)
    line = line_of(REPO + "/tests/user_project/stalls.py", "torch.distributed.all_reduce")
    summary = assert_stalled(job, run_dir, fired_at(once), "rank 0 calls torch.distributed.all_reduce(float32[7])",
                             f"stalls.py:{line} in forward", "rank 1 calls DDP's gradient all-reduce",
                             "in the backward pass")
    assert "the ranks diverged" in summary
    code, out = Job(args).finish()
    assert code == 0, out
    assert_same_weights(weights(run_dir), uninterrupted("faulty-checked", [*QUICK, *FAULTY,
                                                                          "dist.check_collectives=true"]))


def test_without_the_check_a_lone_collective_aborts_its_rank_with_its_stack(tmp_path):
    """gloo refuses mismatched sizes at once (SIGABRT): the rank's Python stacks
    are printed as it dies (faulthandler), its peer names it as lost."""
    once, run_dir = tmp_path / "once", tmp_path / "run"
    job = Job([*QUICK, *FAULTY, f"model.init_args={{once: {once}, fault: all_reduce, rank: 0}}",
               f"run.dir={run_dir}"])
    code, out = job.finish(timeout=120)
    assert code != 0
    line = line_of(REPO + "/tests/user_project/stalls.py", "torch.distributed.all_reduce")
    assert f'stalls.py", line {line} in forward' in out, out
    assert "lost contact with another worker" in out
    assert_nothing_left(job)


@pytest.mark.xdist_group("stall-script")  # one uninterrupted run of the script for both
def test_an_evaluation_one_rank_skips_is_named_as_diverged(tmp_path, uninterrupted):
    once, run_dir = tmp_path / "once", tmp_path / "run"
    args = [SCRIPT, "skip_eval", once, *QUICK[1:], f"run.dir={run_dir}"]
    job = Job(args)
    while not once.exists():
        assert job.poll() is None, job.output
        time.sleep(0.05)
    summary = assert_stalled(job, run_dir, fired_at(once), "the ranks wait in different collectives, so they diverged",
                             "rank 0 in all_reduce (sum) of float64[3]", "metrics.py")
    assert "rank 1 (" in summary
    code, out = Job(args).finish()
    assert code == 0, out
    assert_same_weights(weights(run_dir), uninterrupted("script", [SCRIPT, "none", "-", *QUICK[1:]]))


@pytest.mark.xdist_group("stall-script")  # one uninterrupted run of the script for both
def test_a_checkpoint_write_that_stalls_on_one_rank_is_named_and_the_last_checkpoint_kept(tmp_path, uninterrupted):
    once, run_dir = tmp_path / "once", tmp_path / "run"
    args = [SCRIPT, "slow_save", once, *QUICK[1:], f"run.dir={run_dir}"]
    job = Job(args)
    while not once.exists():
        assert job.poll() is None, job.output
        time.sleep(0.05)
    line = line_of(SCRIPT, "time.sleep(600)")
    assert_stalled(job, run_dir, fired_at(once), f"stall_script.py:{line}", "rank 1 is missing from all_gather_object",
                   "checkpoint writer's group")
    assert find_latest_valid(run_dir).global_step == 10  # the stalled save (step 20) never published
    code, out = Job(args).finish()
    assert code == 0, out
    assert_same_weights(weights(run_dir), uninterrupted("script", [SCRIPT, "none", "-", *QUICK[1:]]))


def test_a_node_waits_the_start_up_timeout_for_the_others_to_meet(tmp_path):
    start = time.monotonic()
    code, out = Job(["configs/quickstart.yaml", "dist.start_timeout_s=4", f"run.dir={tmp_path / 'alone'}"],
                    launch=("launch", "--nproc-per-node", "1", "--nnodes", "2", "--rdzv-endpoint",
                            f"127.0.0.1:{29600 + os.getpid() % 300}", "--rdzv-id", "alone")).finish(timeout=60)
    assert code == 3 and time.monotonic() - start < 4 + SLACK, out
    said = out.strip().splitlines()
    assert len(said) == 2 and "meeting the other nodes of 2" in said[0], out
    assert "did not all meet" in said[1] and "dist.start_timeout_s=4s" in said[1]


def test_start_up_collectives_wait_the_start_up_timeout_not_the_training_one(tmp_path):
    # rank 1 starts 6 s late, longer than dist.timeout_s
    slow = [*QUICK, *FAULTY, "model.init_args={init_sleep: 6}", "dist.timeout_s=4", "dist.hang_timeout_s=0",
            "dist.start_timeout_s=60", "train.epochs=1", f"run.dir={tmp_path / 'slow'}"]
    code, out = Job(slow).finish()
    assert code == 0, out


def test_training_collectives_wait_the_training_timeout(tmp_path):
    # the watchdog off: nothing reports sooner
    once = tmp_path / "once"
    job = Job([*QUICK, *FAULTY, f"model.init_args={{once: {once}}}", "dist.timeout_s=4", "dist.hang_timeout_s=0",
               f"run.dir={tmp_path / 'timeout'}"])
    code, out = job.finish(timeout=120)
    assert code == 1, out
    said = job.when("lost contact with another worker")
    assert said is not None and 4 <= said - fired_at(once) <= 4 + SLACK, out
    assert "dist.timeout_s=4s" in out


def test_sigterm_to_one_worker_always_exits_75(tmp_path):
    """torch's agent signals the other worker when the first one exits 75; a
    saved worker ignores it and exits 75 too (before: 10 of 20 tries exited 1)."""
    for attempt in range(6):
        run_dir = tmp_path / f"run{attempt}"
        job = Job(["configs/quickstart.yaml", "wandb.mode=disabled", "train.stop_check_every_steps=5",
                   "checkpoint.every_epochs=10", f"run.dir={run_dir}"])
        wait_for_step(run_dir, random.Random(attempt).randrange(10, 60), job)
        os.kill(worker_pids(job.pid)[1], signal.SIGTERM)
        code, out = job.finish(timeout=60)
        assert code == 75, f"attempt {attempt}:\n{out}"
        saved = re.search(r"checkpoint saved at step (\d+)", out)
        assert saved and verify_checkpoint(run_dir / "checkpoints" / f"step-{int(saved.group(1)):08d}")
