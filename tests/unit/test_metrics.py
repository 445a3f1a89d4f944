"""Evaluation over a split in one process is exact: every sample counted once,
the numbers computed by hand."""

import numpy as np

from dist_train.env import DistEnv
from tests.helpers import metrics_eval_worker, metrics_reference


def test_single_process_evaluation_is_exact():
    ref = metrics_reference()
    got = metrics_eval_worker(DistEnv(), 10)
    assert got["count"] == 103 and got["accuracy"] == ref["accuracy"]
    assert np.isclose(got["loss"], ref["loss"], rtol=1e-6)
