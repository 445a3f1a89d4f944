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
