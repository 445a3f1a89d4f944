"""Validation/test metrics over a split are exact: every sample counted once
across ranks, the same numbers on every rank as one process computes (real
processes over gloo)."""

import pytest

from tests.helpers import metrics_eval_worker, metrics_reference
from tests.multiproc import run_workers


@pytest.mark.parametrize("world_size", [2, 3])
def test_metrics_reduced_across_ranks_equal_a_single_process_count(world_size):
    ref = metrics_reference()
    results = run_workers(metrics_eval_worker, world_size, 16)
    for r in results:
        assert r["count"] == 103
        assert r["accuracy"] == ref["accuracy"]  # a count: exact
        assert r["loss"] == pytest.approx(ref["loss"], rel=1e-6)
    assert all(r == results[0] for r in results)  # identical on every rank


def regression_eval_worker(env, batch_size):
    import torch

    from dist_train.comm import Comm
    from dist_train.data.loader import eval_shard
    from dist_train.data.sources import Split
    from dist_train.losses import build_loss
    from dist_train.metrics import evaluate

    gen = torch.Generator().manual_seed(2)
    split = Split(torch.randn(103, 2, generator=gen), torch.randn(103, 2, generator=gen))  # outputs = the inputs
    return evaluate(torch.nn.Identity(), eval_shard(split, env, batch_size), build_loss("mse", "regression"),
                    Comm.of(env), env.device, "regression", 2)


@pytest.mark.parametrize("world_size", [2, 3])
def test_regression_metrics_reduced_across_ranks_equal_a_single_process(world_size):
    from dist_train.env import DistEnv

    alone = regression_eval_worker(DistEnv(), 103)
    results = run_workers(regression_eval_worker, world_size, 16)
    for r in results:
        assert r["count"] == 103
        for key in ("mse", "mae", "r2", "loss"):  # float64 sums: the same up to the order of a few additions
            assert r[key] == pytest.approx(alone[key], rel=1e-12), key
    assert all(r == results[0] for r in results)  # identical on every rank


TRAIN_LOSS_RUN = ["data.source=synthetic", "data.num_samples=600", "data.num_features=12", "data.num_classes=3",
                  "model.hidden_sizes=[16]", "optim.lr=0.01", "train.global_batch_size=64",
                  "train.epochs=3", "dist.device=cpu", "wandb.mode=disabled", "run.progress=false"]


def train_records_worker(env, run_dir, log_every):
    """The `train` records of a run logging every `log_every` steps (rank 0's file)."""
    from dist_train.config import load_config
    from dist_train.run import run
    from tests.helpers import metrics

    assert run(load_config(None, [*TRAIN_LOSS_RUN, f"run.dir={run_dir}", f"train.log_every_steps={log_every}"]),
               env) == 0
    return [r for r in metrics(run_dir) if r["event"] == "train"] if env.rank == 0 else None


def test_a_train_records_loss_is_the_mean_of_its_epochs_steps_from_from_step(tmp_path):
    """Every 3 steps over epochs of 7 (420 samples / 64: six steps of 64 and one
    of 36): each record's loss is the sample-weighted mean of the steps
    `from_step` to `step`, all of its own epoch (the steps between an epoch's
    last record and its end are in the epoch record's train_loss); 2 workers
    log what one process does."""
    from dist_train.env import DistEnv

    per_step = {r["step"]: r["loss"] for r in train_records_worker(DistEnv(), tmp_path / "every", 1)}
    records = train_records_worker(DistEnv(), tmp_path / "one", 3)
    assert [(r["epoch"], r["from_step"], r["step"]) for r in records] == [
        (0, 1, 3), (0, 4, 6), (1, 8, 9), (1, 10, 12), (2, 15, 15), (2, 16, 18), (2, 19, 21)]
    for r in records:
        counts = {s: 36 if s % 7 == 0 else 64 for s in range(r["from_step"], r["step"] + 1)}
        mean = sum(per_step[s] * n for s, n in counts.items()) / sum(counts.values())
        assert r["loss"] == pytest.approx(mean, rel=1e-12), r
    two = run_workers(train_records_worker, 2, str(tmp_path / "two"), 3, timeout_s=120)[0]
    assert [{k: v for k, v in r.items() if k not in ("time", "loss", "grad_norm")} for r in two] == \
        [{k: v for k, v in r.items() if k not in ("time", "loss", "grad_norm")} for r in records]
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in records], rel=1e-6)
