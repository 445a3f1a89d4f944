"""Loaders that turn a plan of indices into tensors on the worker's device."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from dist_train.data.sampler import ShardedBatchPlan, even_slices
from dist_train.data.sources import Split, Splits
from dist_train.env import DistEnv


@dataclass(frozen=True)
class Batch:
    inputs: torch.Tensor
    targets: torch.Tensor


@dataclass(frozen=True)
class TrainStep:
    step: int
    micro_batches: tuple[Batch, ...]
    global_count: int


class InMemoryLoader:
    """The training split held on the device, walked by a `ShardedBatchPlan`."""

    def __init__(self, split: Split, plan: ShardedBatchPlan, device: str) -> None:
        self.inputs = split.inputs.to(device)
        self.targets = split.targets.to(device)
        self.plan = plan
        self.device = device

    @property
    def steps_per_epoch(self) -> int:
        return self.plan.steps_per_epoch

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[TrainStep]:
        for step in self.plan.epoch(epoch, start_step):
            micro = []
            for idx in step.micro_indices:
                idx = idx.to(self.device, non_blocking=True)
                micro.append(Batch(self.inputs.index_select(0, idx), self.targets.index_select(0, idx)))
            yield TrainStep(step.step, tuple(micro), step.global_count)


class InMemoryData:
    """Splits held in memory: the sharding plan for training, contiguous shares
    for evaluation."""

    def __init__(self, splits: Splits, env: DistEnv, global_batch_size: int, grad_accum_steps: int, seed: int,
                 drop_last: bool) -> None:
        self.splits, self.env = splits, env
        self.input_shape, self.num_classes = splits.input_shape, splits.num_classes
        self.train_size = len(splits.train)
        plan = ShardedBatchPlan(len(splits.train), global_batch_size, env.world_size, env.rank, seed,
                                grad_accum_steps, drop_last)
        self.train = InMemoryLoader(splits.train, plan, env.device)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        return eval_shard(getattr(self.splits, split), self.env, batch_size)


def eval_shard(split: Split, env: DistEnv, batch_size: int) -> Iterator[Batch]:
    """This rank's contiguous share of an evaluation split, in batches. The
    shares partition the split (no padding, no duplicates), so sums reduced over
    ranks are exactly the single-process sums."""
    lo, hi = even_slices(len(split), env.world_size)[env.rank]
    for start in range(lo, hi, batch_size):
        end = min(start + batch_size, hi)
        yield Batch(split.inputs[start:end].to(env.device), split.targets[start:end].to(env.device))
