"""Sharded data sets streamed by real processes: every sample exactly once over
two ranks and two loader workers, a reproducible stream that resumes mid-epoch
with loader processes, a bad shard stopping every rank, and training on shards
in the in-memory accuracy band."""

import pytest
import torch

from dist_train.comm import Comm
from dist_train.config import load_config
from dist_train.data.prepare import PrepareOptions, prepare
from dist_train.data.stream import ShardData, open_manifest
from dist_train.env import DistEnv
from dist_train.errors import DistTrainError
from tests.helpers import build_trainer
from tests.conftest import REPO
from tests.helpers import corrupt, data_cfg, indexed_dataset
from tests.multiproc import run_workers


# ----------------------------------------------------------------- stream

def stream_worker(env, path, loader_workers, epochs, per_rank_batch):
    cfg = data_cfg(path, loader_workers=loader_workers, shuffle_buffer=128)
    data = ShardData(cfg, env, per_rank_batch * env.world_size, grad_accum_steps=2, seed=3)
    out = []
    for epoch in range(epochs):
        steps = [(torch.cat([b.inputs for b in s.micro_batches])[:, 0].long().tolist(), s.global_count)
                 for s in data.train.epoch(epoch)]
        out.append(steps)
    evals = {split: [int(v) for b in data.eval_batches(split, 16) for v in b.inputs[:, 0].tolist()]
             for split in ("val", "test")}
    return {"epochs": out, "eval": evals}


@pytest.mark.parametrize("n_train", [1000, 1003])  # equal shards, and shards one sample apart
def test_exactly_once_over_two_ranks_and_two_loader_workers(tmp_path, n_train):
    indexed_dataset(tmp_path / "ds", n_train=n_train)
    r0, r1 = run_workers(stream_worker, 2, str(tmp_path / "ds"), 2, 2, 40, timeout_s=180)
    orders = []
    for epoch in range(2):
        s0, s1 = r0["epochs"][epoch], r1["epochs"][epoch]
        assert len(s0) == len(s1)  # every rank does the same number of steps
        seen = [i for steps in (s0, s1) for ids, _ in steps for i in ids]
        assert sorted(seen) == list(range(n_train))  # every sample exactly once
        for (ids0, g0), (ids1, g1) in zip(s0, s1):
            assert g0 == g1 == len(ids0) + len(ids1)  # the step's global count, known on both ranks
        orders.append([i for ids, _ in s0 for i in ids])
    assert orders[0] != orders[1]  # a new order every epoch
    for split, base, n in (("val", 100_000, 37), ("test", 200_000, 41)):
        assert sorted(r0["eval"][split] + r1["eval"][split]) == list(range(base, base + n))


def test_stream_is_reproducible_and_resumes_mid_epoch(tmp_path):
    indexed_dataset(tmp_path / "ds")
    env = DistEnv()
    cfg = data_cfg(tmp_path / "ds", loader_workers=2, shuffle_buffer=100)
    loader = ShardData(cfg, env, 32, 1, seed=5).train
    full = [s.micro_batches[0].inputs[:, 0].tolist() for s in loader.epoch(1)]
    again = [s.micro_batches[0].inputs[:, 0].tolist() for s in loader.epoch(1)]
    tail = [(s.step, s.micro_batches[0].inputs[:, 0].tolist()) for s in loader.epoch(1, start_step=9)]
    assert full == again
    assert [step for step, _ in tail] == list(range(9, len(full)))
    assert [ids for _, ids in tail] == full[9:]


# ----------------------------------------------------------------- bad input

def verify_worker(env, path):
    try:
        open_manifest(path, Comm.of(env))
    except DistTrainError as exc:
        return str(exc)
    return None


def test_a_bad_shard_stops_every_rank_with_the_same_message(tmp_path):
    indexed_dataset(tmp_path / "ds")
    corrupt("truncated", tmp_path / "ds")  # train-00001 is verified by rank 1 only
    r0, r1 = run_workers(verify_worker, 2, str(tmp_path / "ds"), timeout_s=90)
    assert r0 == r1 and r0 is not None and "train-00001.tar" in r0


# ----------------------------------------------------------------- training

def test_training_on_shards_matches_the_in_memory_accuracy_band(tmp_path):
    prepare("digits", PrepareOptions(out=tmp_path / "digits"))
    accuracies = {}
    for source in ("digits", "shards"):
        extra = [f"data.path={tmp_path / 'digits'}", "data.loader_workers=0"] if source == "shards" else []
        cfg = load_config(f"{REPO}/configs/quickstart.yaml", [f"data.source={source}", "train.epochs=20", *extra])
        accuracies[source] = build_trainer(cfg, DistEnv()).fit().test["accuracy"]
    assert accuracies["digits"] >= 0.94 and accuracies["shards"] >= 0.94
    assert abs(accuracies["digits"] - accuracies["shards"]) <= 0.02
