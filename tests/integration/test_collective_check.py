"""dist.check_collectives on real gloo workers: ranks that call different
collectives (or the same with other shapes) are stopped before the collective
runs, with every rank's call site; DDP's gradient all-reduce is checked too;
matching collectives and DDP training are unchanged by the check."""

import pytest
import torch
from torch import nn

from dist_train import collective_check
from dist_train.collective_check import CollectiveMismatch
from tests.multiproc import run_workers


def diverging(env, kind):
    import torch.distributed as dist

    collective_check.start(env.rank, env.world_size)
    try:
        dist.all_reduce(torch.ones(3))  # the same on every rank: passes
        try:
            if kind == "shapes":
                dist.all_reduce(torch.ones(7 if env.rank == 0 else 5))
            else:  # rank 0 reduces before the backward pass; rank 1 goes straight to DDP's all-reduce
                torch.manual_seed(0)
                model = nn.parallel.DistributedDataParallel(nn.Linear(4, 2))
                model.register_comm_hook(None, collective_check.CURRENT.ddp_hook())
                loss = model(torch.ones(3, 4)).sum()
                if env.rank == 0:
                    dist.all_reduce(torch.ones(7))
                loss.backward()
        except CollectiveMismatch as exc:
            return str(exc)
        except RuntimeError as exc:  # raised in DDP's hook: torch wraps it
            return str(exc)
        return "no error"
    finally:
        collective_check.stop()


@pytest.mark.parametrize("kind", ["shapes", "ddp"])
def test_ranks_that_call_different_collectives_are_stopped_with_both_call_sites(kind):
    said = run_workers(diverging, 2, kind, timeout_s=120)
    this_file = __file__.removesuffix("c")
    for text in said:
        assert collective_check.MARK in text, text
        if kind == "shapes":
            assert "rank 0 calls torch.distributed.all_reduce(float32[7])" in text
            assert "rank 1 calls torch.distributed.all_reduce(float32[5])" in text
            assert text.count(f"at {this_file}:") == 2
        else:
            assert "rank 0 calls torch.distributed.all_reduce(float32[7])" in text and f"at {this_file}:" in text
            assert "rank 1 calls DDP's gradient all-reduce(float32[10]) (its collective #2) in the backward pass" in text


def training(env, checked):
    if checked:
        collective_check.start(env.rank, env.world_size)
    try:
        torch.manual_seed(0)
        model = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)))
        if checked:
            model.register_comm_hook(None, collective_check.CURRENT.ddp_hook())
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        gen = torch.Generator().manual_seed(env.rank)
        for _ in range(5):
            opt.zero_grad()
            model(torch.randn(4, 6, generator=gen)).pow(2).mean().backward()
            opt.step()
        return {k: v.detach().clone() for k, v in model.module.state_dict().items()}
    finally:
        collective_check.stop()


def test_the_check_changes_no_number_of_ddp_training():
    plain = run_workers(training, 2, False, timeout_s=120)[0]
    checked = run_workers(training, 2, True, timeout_s=120)[0]
    for key, value in plain.items():
        assert (checked[key] == value).all(), key  # bit for bit: the hook reduces as DDP's own does
