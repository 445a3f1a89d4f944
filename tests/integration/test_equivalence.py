"""N workers on a global batch B end where one process on B ends (real
processes over gloo), for every optimizer, with and without accumulation."""

import numpy as np
import pytest
import torch

from dist_train.config import load_config
from dist_train.env import DistEnv
from tests.helpers import build_trainer
from tests.multiproc import run_workers, to_numpy

# 150 samples with B=32: the last step of each epoch holds 22 samples, so the
# uneven split (11 per rank, 6/5 per micro-batch) is exercised too.
BASE = ["data.source=synthetic", "data.num_samples=200", "data.num_features=12", "data.num_classes=3",
        "data.val_fraction=0.1", "data.test_fraction=0.15", "model.hidden_sizes=[16,8]",
        "train.global_batch_size=32", "train.epochs=2", "dist.device=cpu"]

CASES = {
    "sgd": ["optim.name=sgd", "optim.lr=0.1"],
    "sgd_momentum": ["optim.name=sgd", "optim.lr=0.05", "optim.momentum=0.9", "optim.weight_decay=0.01"],
    "sgd_nesterov": ["optim.name=sgd", "optim.lr=0.05", "optim.momentum=0.9", "optim.nesterov=true"],
    "adagrad": ["optim.name=adagrad", "optim.lr=0.05"],
    "adadelta": ["optim.name=adadelta", "optim.lr=1.0"],
    "rmsprop": ["optim.name=rmsprop", "optim.lr=0.005"],
    "adam": ["optim.name=adam", "optim.lr=0.01", "optim.weight_decay=0.001"],
    "adamw": ["optim.name=adamw", "optim.lr=0.01", "optim.weight_decay=0.05", "train.grad_clip_norm=0.5"],
}


def train_weights(env: DistEnv, overrides: list[str]) -> dict:
    cfg = load_config(None, BASE + overrides)
    result = build_trainer(cfg, env).fit()
    return {k: v.detach().clone() for k, v in result.network.state_dict().items()}


def train_all_cases(env: DistEnv, accum: int) -> dict:
    return {name: train_weights(env, ov + [f"train.grad_accum_steps={accum}"]) for name, ov in CASES.items()}


@pytest.fixture(scope="module")
def single_process() -> dict:
    return {name: to_numpy(train_weights(DistEnv(), ov)) for name, ov in CASES.items()}


@pytest.mark.parametrize("accum", [1, 2])
def test_two_workers_match_one_process_for_every_optimizer(single_process, accum):
    ranks = run_workers(train_all_cases, 2, accum, timeout_s=240)
    for name, reference in single_process.items():
        for rank, result in enumerate(ranks):
            for key, value in reference.items():
                diff = np.max(np.abs(result[name][key] - value))
                assert diff <= 1e-5, f"{name}, rank {rank}, {key}: max |diff| {diff:.3g}"
    # and training moved the weights (the comparison is not of two untouched inits)
    init = to_numpy(train_weights(DistEnv(), CASES["sgd"] + ["train.max_steps=1", "optim.lr=1e-12"]))
    assert np.max(np.abs(single_process["sgd"]["net.1.weight"] - init["net.1.weight"])) > 1e-3


def micro_step_gradients(env: DistEnv) -> dict:
    """Gradients after a micro-step that must not communicate, then after one that must."""
    cfg = load_config(None, BASE)
    trainer = build_trainer(cfg, env)
    strategy = trainer.strategy
    x = torch.full((4, 12), float(env.rank + 1))  # different data on each rank
    y = torch.zeros(4, dtype=torch.long)
    weight = strategy.model.net[1].weight
    strategy.micro_batch(x, y, trainer.loss_fn, 8, last=False)
    after_no_sync = weight.grad.clone()
    strategy.micro_batch(x, y, trainer.loss_fn, 8, last=True)
    return {"no_sync": after_no_sync, "sync": weight.grad.clone()}


def test_accumulation_skips_the_all_reduce_until_the_last_micro_batch():
    r0, r1 = run_workers(micro_step_gradients, 2)
    assert np.max(np.abs(r0["no_sync"] - r1["no_sync"])) > 1e-4  # each rank kept its own gradient
    assert np.array_equal(r0["sync"], r1["sync"])  # the last micro-batch all-reduced everything


def ddp_in_one_process(env: DistEnv, run_dir: str) -> dict:
    import torch.distributed as dist

    from dist_train.run import run

    assert not dist.is_initialized()  # no launcher: the run must start a group of one for DDP
    cfg = load_config(None, BASE + CASES["adam"] + ["strategy.name=ddp", f"run.dir={run_dir}", "wandb.mode=disabled"])
    assert run(cfg, env) == 0
    assert not dist.is_initialized()  # and destroy it again
    from dist_train.checkpoint import find_latest_valid

    return torch.load(find_latest_valid(run_dir).path / "model.pt", weights_only=True)


def test_strategy_ddp_in_a_single_process_trains_like_single(single_process, tmp_path):
    """`dist-train run` (one process, no launcher) with strategy.name=ddp: DDP
    gets a process group of one and ends where the single strategy ends."""
    (result,) = run_workers(ddp_in_one_process, 1, str(tmp_path), timeout_s=120)
    for key, value in single_process["adam"].items():
        assert np.max(np.abs(result[key] - value)) <= 1e-6, key
