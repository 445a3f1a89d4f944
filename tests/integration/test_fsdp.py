"""strategy.name=fsdp (torch's FSDP2) on real gloo workers: 2 and 3 workers
compute what one process computes for every optimizer, with gradient
accumulation and clipping; its checkpoints (DCP shards) resume on another
number of workers and end where the uninterrupted one-process run ends; a
corrupt shard file is named and skipped; the export holds the whole model."""

import numpy as np
import pytest
import torch

import dist_train
from dist_train.checkpoint import find_latest_valid, list_checkpoints, verify_checkpoint
from dist_train.config import load_config
from dist_train.env import DistEnv
from dist_train.errors import DistTrainError
from dist_train.run import run
from tests.helpers import build_trainer
from tests.helpers import sigterm_at
from tests.multiproc import run_workers, to_numpy

BASE = ["data.source=synthetic", "data.num_samples=600", "data.num_features=12", "data.num_classes=3",
        "model.hidden_sizes=[16,8]", "train.global_batch_size=48", "dist.device=cpu", "wandb.mode=disabled",
        "run.progress=false", "strategy.name=fsdp"]
OPTIMIZERS = {"sgd": ["optim.name=sgd", "optim.lr=0.1", "optim.momentum=0.9", "optim.weight_decay=0.01"],
              "adagrad": ["optim.name=adagrad", "optim.lr=0.05"], "adadelta": ["optim.name=adadelta", "optim.lr=1.0"],
              "rmsprop": ["optim.name=rmsprop", "optim.lr=0.01", "optim.momentum=0.5"],
              "adam": ["optim.name=adam", "optim.lr=0.01"],
              "adamw": ["optim.name=adamw", "optim.lr=0.01", "optim.weight_decay=0.1"]}
# accumulation (no reduction on the first micro-batch) and clipping by the norm over all shards
HARD = ["train.grad_accum_steps=2", "train.grad_clip_norm=0.3", "train.epochs=2"]


def trained(env, optimizer, *extra):
    from dist_train.distributed import process_group

    cfg = load_config(None, [*BASE, *OPTIMIZERS[optimizer], *HARD, *extra])
    with process_group(env, 60, group_of_one=True):  # fsdp needs a group, one process's too (run() makes it)
        result = build_trainer(cfg, env).fit()
    return {"weights": {k: v.detach().clone() for k, v in result.network.state_dict().items()}, "test": result.test}


def trained_with_each_optimizer(env):
    return {optimizer: trained(env, optimizer) for optimizer in OPTIMIZERS}


def test_two_and_three_fsdp_workers_compute_what_one_process_computes():
    """For every optimizer; the workers train with each in turn (one start of
    2 and of 3 processes for all six, not one per optimizer)."""
    alone = {optimizer: to_numpy(trained(DistEnv(), optimizer)) for optimizer in OPTIMIZERS}
    for workers in (2, 3):
        ranks = run_workers(trained_with_each_optimizer, workers, timeout_s=300)
        for rank, results in enumerate(ranks):
            for optimizer, result in results.items():
                for key, value in alone[optimizer]["weights"].items():
                    diff = float(np.max(np.abs(result["weights"][key] - value)))
                    assert diff <= 1e-5, f"{optimizer}, {workers} workers, rank {rank}, {key}: {diff:.3g}"
                assert abs(result["test"]["loss"] - alone[optimizer]["test"]["loss"]) <= 1e-5 and \
                    result["test"]["accuracy"] == alone[optimizer]["test"]["accuracy"], (optimizer, workers, rank)
    for optimizer in OPTIMIZERS:  # each optimizer did train
        untrained = to_numpy(trained(DistEnv(), optimizer, "train.max_steps=1", "optim.lr=1e-12"))["weights"]
        assert max(float(np.max(np.abs(alone[optimizer]["weights"][k] - untrained[k]))) for k in untrained) > 1e-3, \
            optimizer


@pytest.mark.parametrize("strategy", ["fsdp", "ddp"])
def test_synchronized_batch_norm_with_adam_and_accumulation_computes_what_one_process_computes(strategy):
    """Batch norm's statistics are over each global micro-batch (the plan cuts
    the global batch into micro-batches first), and the bias before a norm,
    whose true gradient is zero, gets exactly zero (Adam would turn its
    rounding noise into steps of the learning rate)."""
    extra = ["model.batch_norm=true", "model.sync_batchnorm=true", f"strategy.name={strategy}"]
    alone = to_numpy(trained(DistEnv(), "adam", *extra))
    for rank, result in enumerate(run_workers(trained, 2, "adam", *extra, timeout_s=240)):
        for key, value in alone["weights"].items():  # running statistics included
            assert float(np.max(np.abs(result["weights"][key] - value))) <= 1e-5, (rank, key)


RESUME = [*BASE, "optim.name=adam", "optim.lr=0.01", "train.epochs=3", "train.stop_check_every_steps=1",
          "checkpoint.every_steps=5", "schedule.name=cosine", "train.grad_clip_norm=0.5"]


def job(env, run_dir, stop_at, *extra):
    cfg = load_config(None, [*RESUME, *extra, f"run.dir={run_dir}"])
    return run(cfg, env, sigterm_at(stop_at)) if stop_at else run(cfg, env)


def weights(run_dir):
    return torch.load(find_latest_valid(run_dir).path / "model.pt", weights_only=True)


def max_diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_saved_on_two_workers_it_resumes_on_three_and_on_one_as_one_process_would(tmp_path):
    assert job(DistEnv(), tmp_path / "whole", 0) == 0
    whole = weights(tmp_path / "whole")
    for resumed_on in (3, 1):
        run_dir = tmp_path / f"to{resumed_on}"
        assert run_workers(job, 2, str(run_dir), 17, timeout_s=240) == [75, 75]  # step 17: mid-epoch 2 (13 a epoch)
        statuses = run_workers(job, resumed_on, str(run_dir), 0, timeout_s=240) if resumed_on > 1 else \
            [job(DistEnv(), run_dir, 0)]
        assert set(statuses) == {0}
        assert max_diff(whole, weights(run_dir)) <= 1e-5, resumed_on
    assert verify_checkpoint(list_checkpoints(tmp_path / "to1")[0]).manifest["world_size"] == 1


def test_a_corrupt_shard_file_is_named_and_the_checkpoint_before_it_is_used(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert run_workers(job, 2, str(run_dir), 17, timeout_s=240) == [75, 75]
    newest, previous = list_checkpoints(run_dir)[:2]
    shard = newest / "dcp" / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DistTrainError, match=r"dcp/__1_0.distcp does not match its SHA-256"):
        verify_checkpoint(newest)
    capsys.readouterr()
    assert job(DistEnv(), run_dir, 0) == 0  # on one worker, from the checkpoint before
    out = capsys.readouterr()
    assert f"resuming from {previous}" in out.out and "__1_0.distcp does not match" in out.err


def test_an_fsdp_run_exports_the_whole_model(tmp_path):
    assert run_workers(job, 2, str(tmp_path / "run"), 0, timeout_s=240) == [0, 0]
    done = dist_train.export(tmp_path / "run", tmp_path / "model.pt")
    model = dist_train.load_model(done.bundle)
    assert model.network.net[1].weight.shape == (16, 12)  # whole, not a shard
    x = torch.randn(5, 12)
    assert model.predict(x).shape == (5,)
