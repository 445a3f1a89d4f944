"""Exact resume: a run stopped at any step and resumed ends bit-identical to
the uninterrupted run (weights, optimizer state, logged metrics; atol = rtol = 0),
for world sizes 1 and 2, in-memory and shard data, mid-epoch and at an epoch's
end, with and without gradient accumulation."""

from pathlib import Path

import pytest

from dist_train.errors import EXIT_RESUME
from dist_train.config import load_config
from dist_train.data.prepare import PrepareOptions, prepare
from dist_train.env import DistEnv
from dist_train.run import run
from tests.helpers import assert_same_final_state, final_state, metrics, sigterm_at
from tests.multiproc import run_workers


STEPS_PER_EPOCH = 7  # 420 training samples / global batch 64 -> 6 full steps and one of 36


def overrides(run_dir, data, accum):
    base = ["data.num_samples=600", "data.num_features=12", "data.num_classes=3", "model.hidden_sizes=[16]",
            "model.dropout=0.3", "optim.name=adam", "optim.lr=0.01", "train.global_batch_size=64",
            "train.epochs=3", f"train.grad_accum_steps={accum}", "train.log_every_steps=4",
            "train.stop_check_every_steps=1", "checkpoint.every_steps=5", "checkpoint.keep_last=2",
            "schedule.name=cosine", "schedule.warmup_steps=3", "dist.device=cpu", f"run.dir={run_dir}"]
    if data == "memory":
        return base + ["data.source=synthetic"]
    return base + ["data.source=shards", f"data.path={data}", "data.loader_workers=1"]


def one_job(env, root, data, accum, stop_after):
    """The uninterrupted run, and the same run stopped after `stop_after` steps then resumed."""
    whole, broken = Path(root) / f"whole-{data != 'memory'}-{accum}", Path(root) / f"broken-{data != 'memory'}-{accum}-{stop_after}"
    assert run(load_config(None, overrides(whole, data, accum)), env) == 0
    status = run(load_config(None, overrides(broken, data, accum)), env, sigterm_at(stop_after))
    assert status == EXIT_RESUME
    assert run(load_config(None, overrides(broken, data, accum)), env) == 0
    return {"whole": final_state(whole), "resumed": final_state(broken)}


def assert_identical(result):
    assert_same_final_state(result["whole"], result["resumed"], 21)


def jobs(env, root, cases):
    return [one_job(env, root, *case) for case in cases]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    path = tmp_path_factory.mktemp("shards") / "synthetic"
    prepare("synthetic", PrepareOptions(out=path, num_samples=600, input_shape=(12,), num_classes=3,
                                        train_shards=4, val_fraction=0.15, test_fraction=0.15))
    return str(path)


# (data, accum, stop after step): 10 is mid-epoch 2, 14 is the end of epoch 2
def cases(shards):
    return [("memory", 1, 10), ("memory", 2, 14), (shards, 1, 14), (shards, 2, 10)]


def test_exact_resume_single_process(tmp_path, shards):
    for result in jobs(DistEnv(), str(tmp_path), cases(shards)):
        assert_identical(result)


def test_exact_resume_two_workers(tmp_path, shards):
    results = run_workers(jobs, 2, str(tmp_path), cases(shards), timeout_s=300)
    for result in results[0]:  # rank 0 read the shared run directories
        assert_identical(result)


# 10: mid-epoch 2 (the resumed start runs 4 of its 7 steps); 14: its last step (the resumed start runs none)
@pytest.mark.parametrize("stop_after", [10, 14])
def test_a_resumed_epoch_reports_the_throughput_of_all_its_steps(tmp_path, stop_after):
    """The epoch record of an epoch a stop cut in two counts every sample of the
    epoch over the time spent training it, in both starts (not the time the job
    was down): samples_per_s > 0 and samples_per_s x epoch_seconds = the epoch's samples."""
    cfg = load_config(None, overrides(tmp_path, "memory", 1))
    assert run(cfg, DistEnv(), sigterm_at(stop_after)) == EXIT_RESUME
    assert run(cfg, DistEnv()) == 0
    records = metrics(tmp_path)
    samples = next(r for r in records if r["event"] == "start")["train_samples"]  # every one, once an epoch
    resumed = next(i for i, r in enumerate(records) if r["event"] == "resume")
    epoch = next(r for r in records[resumed:] if r["event"] == "epoch")
    assert epoch["epoch"] == 1 and epoch["samples_per_s"] > 0, epoch
    # epoch_seconds is rounded to 0.1 ms
    assert abs(samples / epoch["samples_per_s"] - epoch["epoch_seconds"]) <= 5e-5 + 1e-9, epoch
