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
