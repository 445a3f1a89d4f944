"""Mini-batch sharding: every index once per epoch across ranks, a new order
each epoch, the same order on every rank, per-rank batch = global / N."""

import pytest
import torch

from dist_train.data.sampler import ShardedBatchPlan, even_slices


def plans(n, batch, world, accum=1, drop_last=False, seed=7):
    return [ShardedBatchPlan(n, batch, world, r, seed, accum, drop_last) for r in range(world)]


def epoch_indices(plan, epoch):
    return [torch.cat(s.micro_indices) for s in plan.epoch(epoch)]


@pytest.mark.parametrize("n, batch, world, accum", [(96, 32, 2, 1), (100, 32, 2, 2), (101, 30, 3, 1), (5, 8, 4, 2)])
def test_each_epoch_covers_every_index_exactly_once_across_ranks(n, batch, world, accum):
    for epoch in range(3):
        seen = torch.cat([torch.cat(epoch_indices(p, epoch)) for p in plans(n, batch, world, accum)])
        assert sorted(seen.tolist()) == list(range(n))


def test_order_changes_between_epochs_and_is_identical_on_every_rank():
    ranks = plans(200, 40, 2)
    assert torch.equal(ranks[0].permutation(0), ranks[1].permutation(0))
    assert not torch.equal(ranks[0].permutation(0), ranks[0].permutation(1))
    # the ranks' shares of each step, put side by side, are that step's global batch
    for step0, step1 in zip(ranks[0].epoch(1), ranks[1].epoch(1)):
        glob = ranks[0].permutation(1)[step0.step * 40:(step0.step + 1) * 40]
        assert torch.equal(torch.cat([*step0.micro_indices, *step1.micro_indices]), glob)
    # a different seed is a different order
    assert not torch.equal(ranks[0].permutation(0), plans(200, 40, 2, seed=8)[0].permutation(0))


def test_per_rank_batch_is_global_batch_over_workers_and_micro_batches_split_it():
    plan = plans(256, 64, 4, accum=2)[3]
    steps = list(plan.epoch(0))
    assert len(steps) == plan.steps_per_epoch == 4
    for s in steps:
        assert [len(m) for m in s.micro_indices] == [8, 8]
        assert s.global_count == 64


@pytest.mark.parametrize("n, batch, world, accum", [(256, 64, 4, 2), (100, 32, 3, 2), (70, 32, 2, 3)])
def test_the_ranks_micro_batch_m_together_are_one_process_micro_batch_m(n, batch, world, accum):
    """What batch norm's statistics are taken over (synchronized): the same
    samples, micro-batch by micro-batch, on any number of workers."""
    alone = plans(n, batch, 1, accum)[0]
    ranks = plans(n, batch, world, accum)
    for one, *shares in zip(alone.epoch(0), *(p.epoch(0) for p in ranks)):
        for m, micro in enumerate(one.micro_indices):
            assert torch.equal(torch.cat([s.micro_indices[m] for s in shares]), micro)


def test_uneven_last_batch_is_kept_and_spread_over_ranks():
    ranks = plans(70, 32, 3)  # 32 + 32 + 6
    assert ranks[0].steps_per_epoch == 3
    last = [list(p.epoch(0))[-1] for p in ranks]
    assert [sum(len(m) for m in s.micro_indices) for s in last] == [2, 2, 2]
    assert all(s.global_count == 6 for s in last)
    # fewer samples than ranks: some ranks get none, none is duplicated
    tiny = [list(p.epoch(0))[-1] for p in plans(33, 32, 3)]
    assert [sum(len(m) for m in s.micro_indices) for s in tiny] == [1, 0, 0]


def test_drop_last_drops_the_remainder_and_a_different_one_each_epoch():
    ranks = plans(70, 32, 2, drop_last=True)
    assert ranks[0].steps_per_epoch == 2
    dropped = []
    for epoch in range(2):
        seen = torch.cat([torch.cat(epoch_indices(p, epoch)) for p in ranks])
        assert len(seen) == 64 and len(set(seen.tolist())) == 64
        dropped.append(set(range(70)) - set(seen.tolist()))
    assert dropped[0] != dropped[1]


def test_start_step_continues_the_same_epoch():
    plan = plans(100, 10, 2)[1]
    full = epoch_indices(plan, 4)
    tail = [torch.cat(s.micro_indices) for s in plan.epoch(4, start_step=6)]
    assert all(torch.equal(a, b) for a, b in zip(full[6:], tail)) and len(tail) == 4


def test_even_slices_partition():
    assert even_slices(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert even_slices(2, 4) == [(0, 1), (1, 2), (2, 2), (2, 2)]
