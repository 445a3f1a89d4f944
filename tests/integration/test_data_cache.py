"""`data.cache: host | device`: splits read once and cut in memory, with every
guarantee of streamed data: each sample once per epoch, N workers == 1
process, bit-exact resume mid-epoch; the same numbers as uncached in-memory
and custom data (real gloo workers)."""

import numpy as np
import pytest
import torch

from dist_train.config import load_config
from dist_train.data.prepare import PrepareOptions, prepare
from dist_train.env import DistEnv
from dist_train.errors import EXIT_RESUME
from dist_train.run import run
from tests.helpers import build_trainer
from tests.conftest import REPO
from tests.helpers import final_state, indexed_dataset, sigterm_at
from tests.multiproc import run_workers, to_numpy

SMALL = ["model.hidden_sizes=[16]", "model.dropout=0.2", "optim.lr=0.01", "train.global_batch_size=32",
         "train.epochs=2", "dist.device=cpu", "wandb.mode=disabled"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    path = tmp_path_factory.mktemp("shards") / "synthetic"
    prepare("synthetic", PrepareOptions(out=path, num_samples=600, input_shape=(12,), num_classes=3, train_shards=4))
    return str(path)


def cached_indices(env, path):
    cfg = load_config(None, ["data.source=shards", f"data.path={path}", "data.normalize=none", "data.cache=host",
                             "data.loader_workers=3", "train.global_batch_size=64", "train.grad_accum_steps=2",
                             "dist.device=cpu"])
    data = build_trainer(cfg, env).data
    epochs = [[([int(v) for b in s.micro_batches for v in b.inputs[:, 0].tolist()], s.global_count)
               for s in data.train.epoch(e)] for e in range(2)]
    evals = {split: [int(v) for b in data.eval_batches(split, 16) for v in b.inputs[:, 0].tolist()]
             for split in ("val", "test")}
    return {"epochs": epochs, "eval": evals}


def test_cached_shards_use_every_sample_once_per_epoch(tmp_path):
    # 3 loader workers do not divide 8 shards over 2 ranks: no matter, a cache reads every shard itself
    indexed_dataset(tmp_path / "ds", n_train=1003)
    r0, r1 = run_workers(cached_indices, 2, str(tmp_path / "ds"), timeout_s=180)
    for epoch in range(2):
        s0, s1 = r0["epochs"][epoch], r1["epochs"][epoch]
        assert len(s0) == len(s1) == 16  # ceil(1003 / 64)
        seen = [i for steps in (s0, s1) for ids, _ in steps for i in ids]
        assert sorted(seen) == list(range(1003))
        assert [g for _, g in s0] == [64] * 15 + [43]
    assert r0["epochs"][0] != r0["epochs"][1]
    for split, base, n in (("val", 100_000, 37), ("test", 200_000, 41)):
        assert sorted(r0["eval"][split] + r1["eval"][split]) == list(range(base, base + n))


def weights(env, overrides):
    result = build_trainer(load_config(None, [*SMALL, *overrides]), env).fit()
    return {"weights": {k: v.detach().clone() for k, v in result.network.state_dict().items()}, "test": result.test}


def test_cached_shards_on_two_workers_equal_one_process(shards):
    keys = ["data.source=shards", f"data.path={shards}", "data.cache=host", "model.dropout=0.0"]  # (dropout draws per rank)
    alone = to_numpy(weights(DistEnv(), keys))
    for result in run_workers(weights, 2, keys, timeout_s=180):
        for key, value in alone["weights"].items():
            assert np.max(np.abs(result["weights"][key] - value)) <= 1e-5, key


@pytest.mark.parametrize("source", [
    ["data.source=synthetic", "data.num_features=12", "data.num_classes=3", "data.num_samples=500"],
    ["data.source=custom", f"data.class_path={REPO}/tests/user_project/data.py:make_splits", "data.loader_workers=0"],
], ids=["synthetic", "custom"])
def test_a_cache_changes_no_number(source):
    """In memory already, or a custom dataset: the same plan, the same normalized values, the same weights."""
    plain = weights(DistEnv(), source)
    for cache in ("host", "device"):  # on a CPU both are host memory
        cached = weights(DistEnv(), [*source, f"data.cache={cache}"])
        for key, value in plain["weights"].items():
            assert torch.equal(value, cached["weights"][key]), (cache, key)


def resume_jobs(env, root, shards):
    found = {}
    keys = [*SMALL, "data.source=shards", f"data.path={shards}", "data.cache=host", "train.epochs=3",
            "train.stop_check_every_steps=1", "checkpoint.every_steps=5", "schedule.name=cosine"]
    for name, stop in (("whole", None), ("broken", 10)):  # 14 steps an epoch (420 samples): step 10 is mid-epoch
        overrides = [*keys, f"run.dir={root}/{name}"]
        if stop:
            assert run(load_config(None, overrides), env, sigterm_at(stop)) == EXIT_RESUME
        assert run(load_config(None, overrides), env) == 0
        found[name] = final_state(f"{root}/{name}")
    return found


def assert_identical(found):
    whole, resumed = found["whole"], found["broken"]
    assert whole["step"] == resumed["step"] == 42
    for key, value in whole["model"].items():
        assert np.array_equal(np.asarray(value), np.asarray(resumed["model"][key])), key
    assert whole["events"] == resumed["events"]


def test_cached_shards_resume_bit_exact_mid_epoch(tmp_path, shards):
    assert_identical(resume_jobs(DistEnv(), str(tmp_path / "one"), shards))
    assert_identical(run_workers(resume_jobs, 2, str(tmp_path / "two"), shards, timeout_s=300)[0])


def test_switching_a_shard_run_to_the_cache_restarts_the_interrupted_epoch(tmp_path, shards):
    keys = [*SMALL, "data.source=shards", f"data.path={shards}", "train.epochs=3", "train.stop_check_every_steps=1",
            f"run.dir={tmp_path}"]
    assert run(load_config(None, keys), DistEnv(), sigterm_at(10)) == EXIT_RESUME  # streamed, stopped mid-epoch
    assert run(load_config(None, [*keys, "data.cache=host"]), DistEnv()) == 0
    import json

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    resume = next(r for r in records if r["event"] == "resume")
    assert resume["changed"] == {"data.cache": ["none", "host"]}
    # the cache visits samples in another order: epoch 0 is trained again from its start (14 steps), not from step 10
    assert resume["step"] == 10
    assert [r["step"] for r in records if r["event"] == "epoch"] == [10 + 14, 10 + 28, 10 + 42]
