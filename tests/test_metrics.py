"""Validation/test metrics over a split are exact: every sample counted once
across ranks, the same numbers on every rank as one process computes."""

import numpy as np
import pytest
import torch

from dist_train.comm import Comm
from dist_train.config import ModelConfig
from dist_train.data.loader import eval_shard
from dist_train.data.sources import Split
from dist_train.env import DistEnv
from dist_train.losses import build_loss
from dist_train.metrics import evaluate
from dist_train.models import build_model
from tests.multiproc import run_workers


def fixture_model_and_split():
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden_sizes=(8,)), (5,), 3)
    gen = torch.Generator().manual_seed(1)
    split = Split(torch.randn(103, 5, generator=gen), torch.randint(0, 3, (103,), generator=gen))
    return model, split


def eval_worker(env: DistEnv, batch_size: int) -> dict:
    model, split = fixture_model_and_split()
    return evaluate(model, eval_shard(split, env, batch_size), build_loss("cross_entropy"), Comm.of(env), env.device)


def reference() -> dict:
    model, split = fixture_model_and_split()
    with torch.no_grad():
        logits = model(split.inputs)
    correct = int((logits.argmax(1) == split.targets).sum())
    loss = torch.nn.functional.cross_entropy(logits.double(), split.targets).item()
    return {"accuracy": correct / 103, "loss": loss, "count": 103}


@pytest.mark.parametrize("world_size", [2, 3])
def test_metrics_reduced_across_ranks_equal_a_single_process_count(world_size):
    ref = reference()
    results = run_workers(eval_worker, world_size, 16)
    for r in results:
        assert r["count"] == 103
        assert r["accuracy"] == ref["accuracy"]  # a count: exact
        assert r["loss"] == pytest.approx(ref["loss"], rel=1e-6)
    assert all(r == results[0] for r in results)  # identical on every rank


def test_single_process_evaluation_is_exact():
    ref = reference()
    got = eval_worker(DistEnv(), 10)
    assert got["count"] == 103 and got["accuracy"] == ref["accuracy"]
    assert np.isclose(got["loss"], ref["loss"], rtol=1e-6)
