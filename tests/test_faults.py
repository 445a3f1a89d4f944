"""Surviving faults with real processes and real signals: NaN on one rank,
SIGTERM mid-epoch, kill -9 under the elastic launcher, a lost peer, a
different number of workers on resume."""

import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dist_train.checkpoint import find_latest_valid, list_checkpoints
from dist_train.config import load_config
from dist_train.data.loader import InMemoryData
from dist_train.data.sampler import ShardedBatchPlan
from dist_train.tracking import Tracker
from dist_train.data.sources import build_splits
from dist_train.env import DistEnv
from dist_train.errors import TrainingFailed
from dist_train.resolve import resolve
from dist_train.trainer import Trainer
from tests.conftest import REPO
from tests.multiproc import free_port, run_workers, wait_for_step, worker_pids

# ------------------------------------------------------------ non-finite values

NAN = ["data.source=synthetic", "data.num_samples=300", "data.num_features=8", "data.num_classes=3",
       "model.hidden_sizes=[8]", "train.global_batch_size=32", "train.epochs=2", "dist.device=cpu",
       "checkpoint.every_steps=2"]


def nan_worker(env, mode, run_dir, strategy=()):
    cfg = load_config(None, [*NAN, f"train.nonfinite={mode}", f"run.dir={run_dir}", *strategy])
    resolved = resolve(cfg, env.world_size)
    splits = build_splits(cfg.data)
    splits.train.inputs[17, 3] = float("nan")  # one sample: it lands on exactly one rank
    data = InMemoryData(splits, env, resolved.global_batch_size, 1, cfg.train.seed, False)
    owner = [r for r in range(env.world_size)
             if any(17 in m.tolist() for s in ShardedBatchPlan(len(splits.train), 32, env.world_size, r, 0).epoch(0)
                    for m in s.micro_indices)]
    tracker = Tracker(Path(run_dir), console=None) if env.is_rank0 else None
    trainer = Trainer.build(cfg, env, data=data, tracker=tracker, run_dir=Path(run_dir))
    try:
        result = trainer.fit()
        outcome = ("finished", result.steps)
    except TrainingFailed as exc:
        outcome = ("failed", str(exc))
    weights_finite = all(torch.isfinite(v).all() for v in trainer.strategy.model_state_dict().values())
    return {"outcome": outcome, "owner": owner, "finite": bool(weights_finite)}


STRATEGIES = [pytest.param((), id="ddp"),
              pytest.param(("strategy.name=deepspeed", "strategy.zero_stage=2"), id="deepspeed-zero2",
                           marks=pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                                    reason="DeepSpeed is not installed (pip install -e '.[deepspeed]')"))]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_nan_on_one_rank_stops_every_rank_with_a_message(tmp_path, strategy):
    r0, r1 = run_workers(nan_worker, 2, "stop", str(tmp_path), strategy, timeout_s=120)
    assert len(r0["owner"]) == 1  # the NaN sample sat on one rank only
    assert r0["outcome"][0] == r1["outcome"][0] == "failed"
    assert "non-finite loss or gradient" in r0["outcome"][1] and "train.nonfinite=skip" in r0["outcome"][1]
    assert r0["outcome"][1] == r1["outcome"][1]  # same step, same words
    assert r0["finite"] and r1["finite"]
    for path in list_checkpoints(tmp_path):  # no checkpoint holds NaN weights
        weights = torch.load(path / "model.pt", weights_only=True)
        assert all(torch.isfinite(v).all() for v in weights.values())


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_nan_steps_can_be_skipped(tmp_path, strategy):
    r0, r1 = run_workers(nan_worker, 2, "skip", str(tmp_path), strategy, timeout_s=120)
    assert r0["outcome"] == r1["outcome"] and r0["outcome"][0] == "finished"
    assert r0["finite"]
    skipped = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
               if '"skipped_step"' in line]
    assert len(skipped) == 2  # the NaN sample is in one step of each of the 2 epochs


# ------------------------------------------------------------ stop requests

REPEAT = """
import os, signal
from dist_train.stop_request import StopRequest
stop = StopRequest().install()
os.kill(os.getpid(), signal.SIGUSR1)   # SLURM's notice to every process of the step
os.kill(os.getpid(), signal.SIGUSR1)   # and torchrun passing it on: the same notice
print("still here", stop.requested, stop.signal_name, flush=True)
stop._first_at -= StopRequest.REPEAT_S  # much later: someone insists
os.kill(os.getpid(), signal.SIGTERM)
print("not reached", flush=True)
"""


def test_a_repeated_notice_is_one_stop_request_and_a_later_signal_stops_at_once():
    proc = subprocess.run([sys.executable, "-c", REPEAT], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.stdout.splitlines() == ["still here True SIGUSR1"], proc.stdout + proc.stderr
    assert proc.returncode == -signal.SIGTERM


# ------------------------------------------------------------ the command line

CPU = ["configs/cpu_test.yaml", "train.epochs=12", "checkpoint.every_steps=5", "checkpoint.keep_last=3",
       "train.stop_check_every_steps=1", "model.dropout=0.2"]


def launch(run_dir, *extra, restarts=0):
    return subprocess.Popen([sys.executable, "-m", "launcher", "launch", "--nproc-per-node", "2", "--max-restarts",
                             str(restarts), *CPU, f"run.dir={run_dir}", *extra],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def final_weights(run_dir):
    return torch.load(find_latest_valid(run_dir).path / "model.pt", weights_only=True)


def finish(proc, timeout=300):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


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
        procs.append(subprocess.Popen([sys.executable, "-m", "launcher", "run", *CPU, "train.epochs=1000",
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


# ------------------------------------------------------------ a different number of workers

def resize_worker(env, run_dir, stop_after):
    from dist_train.run import run
    from tests.test_resume import sigterm_at

    cfg = load_config(f"{REPO}/configs/cpu_test.yaml", [f"run.dir={run_dir}", "checkpoint.every_steps=4",
                                                        "train.stop_check_every_steps=1", "schedule.name=cosine"])
    return run(cfg, env, sigterm_at(stop_after)) if stop_after else run(cfg, env)


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)])
def test_resume_with_a_different_number_of_workers_continues_the_epoch(tmp_path, before, after):
    def go(world, stop_after):
        if world == 1:
            return [resize_worker(DistEnv(), str(tmp_path), stop_after)]
        return run_workers(resize_worker, 2, str(tmp_path), stop_after, timeout_s=120)

    assert go(before, 20) == [75] * before  # stopped mid-epoch 2 (14 steps per epoch)
    assert go(after, 0) == [0] * after
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    resume = [e for e in events if e["event"] == "resume"][-1]
    assert (resume["previous_world_size"], resume["world_size"]) == (before, after)
    assert resume["epoch"] == 1 and resume["step"] == 20
    lr_steps = [e["step"] for e in events if e["event"] == "lr"]
    assert lr_steps == list(range(1, 43))  # the LR changes every step: each step once, none repeated or skipped
    assert [e["step"] for e in events if e["event"] == "epoch"] == [14, 28, 42]
    assert [e for e in events if e["event"] == "test"][0]["test_accuracy"] > 0.9
