"""Resuming on another number of workers, exactly: a run saved mid-epoch by 2
workers goes on with 3 and with 1 and ends where the uninterrupted run ends
(within float tolerance: the reductions add in another order). Streamed
shards keep the run's stream layout, so every global batch is the one the
uninterrupted run took; in-memory data and custom datasets follow the global
batch's plan, which no number of workers changes."""

import pytest
import torch

from dist_train.checkpoint import find_latest_valid
from dist_train.config import load_config
from dist_train.data.prepare import PrepareOptions, prepare
from dist_train.env import DistEnv
from dist_train.run import run
from tests.conftest import REPO
from tests.helpers import data_cfg, indexed_dataset, sigterm_at
from tests.multiproc import run_workers

COMMON = ["optim.name=adam", "optim.lr=0.01", "train.global_batch_size=48", "train.epochs=3",
          "train.stop_check_every_steps=1", "checkpoint.every_steps=5", "schedule.name=cosine", "dist.device=cpu",
          "wandb.mode=disabled", "run.progress=false", "model.hidden_sizes=[16]"]
SOURCES = {"shards": ["data.source=shards", "data.loader_workers=2"],
           "memory": ["data.source=synthetic", "data.num_samples=600", "data.num_features=12", "data.num_classes=3"],
           "custom": ["data.source=custom", f"data.class_path={REPO}/tests/user_project/data.py:make_splits",
                      "data.init_args={n_train: 500, features: 12}", "data.loader_workers=0"]}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    path = tmp_path_factory.mktemp("shards") / "synthetic"
    prepare("synthetic", PrepareOptions(out=path, num_samples=600, input_shape=(12,), num_classes=3, train_shards=4))
    return str(path)


def job(env, source, shards, run_dir, stop_at):
    cfg = load_config(None, [*COMMON, *SOURCES[source], f"data.path={shards}" if source == "shards" else
                             "data.path=", f"run.dir={run_dir}"])
    return run(cfg, env, sigterm_at(stop_at)) if stop_at else run(cfg, env)


def on(workers, *args):
    return run_workers(job, workers, *args, timeout_s=240) if workers > 1 else [job(DistEnv(), *args)]


def weights(run_dir):
    return torch.load(find_latest_valid(run_dir).path / "model.pt", weights_only=True)


@pytest.mark.parametrize("source", list(SOURCES))
def test_saved_by_two_workers_mid_epoch_it_ends_on_three_and_on_one_as_the_uninterrupted_run(tmp_path, shards, source):
    # streamed shards: their order is the run's stream layout (2 streams here); the others: one process's
    whole = tmp_path / "whole"
    assert on(2 if source == "shards" else 1, source, shards, str(whole), 0) in ([0, 0], [0])
    expected = weights(whole)
    for resumed_on in (3, 1):
        run_dir = tmp_path / f"to{resumed_on}"
        assert on(2, source, shards, str(run_dir), 13) == [75, 75]  # mid-epoch 2
        assert set(on(resumed_on, source, shards, str(run_dir), 0)) == {0}
        got = weights(run_dir)
        diff = max(float((expected[k] - got[k]).abs().max()) for k in expected)
        assert diff <= 1e-5, (resumed_on, diff)


def layout_worker(env, path, start_step):
    from dist_train.data.stream import ShardData

    data = ShardData(data_cfg(path, loader_workers=2, shuffle_buffer=64), env, 60, grad_accum_steps=2, seed=3)
    data.train.load_state_dict({"layout": [2, 2, 64]})  # the run began on 2 workers with 2 readers each
    return [(s.step, sorted(int(v) for b in s.micro_batches for v in b.inputs[:, 0].tolist()), s.global_count)
            for epoch in (0, 1) for s in data.train.epoch(epoch, start_step if epoch == 0 else 0)]


def test_the_stream_layout_gives_every_number_of_workers_the_same_global_batches(tmp_path):
    indexed_dataset(tmp_path / "ds", n_train=1003, shards=8)  # shards one sample apart: ragged last steps
    reference = run_workers(layout_worker, 2, str(tmp_path / "ds"), 0, timeout_s=120)
    for workers in (1, 3):
        ranks = run_workers(layout_worker, workers, str(tmp_path / "ds"), 7, timeout_s=120) if workers > 1 else \
            [layout_worker(DistEnv(), str(tmp_path / "ds"), 7)]
        for i, steps in enumerate(zip(*reference)):
            if i < 7:
                continue  # started at step 7 of epoch 0
            expected = sorted(v for _, ids, _ in steps for v in ids)
            got = sorted(v for rank in ranks for _, ids, _ in [rank[i - 7]] for v in ids)
            assert got == expected, (workers, i)
            assert {rank[i - 7][2] for rank in ranks} == {steps[0][2]}  # the step's global count, on every rank
