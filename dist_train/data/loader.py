"""Loaders that turn a plan of indices into tensors on the worker's device."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

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
    """One optimizer step of one rank: its micro-batches (`train.grad_accum_steps`
    of them, possibly empty when the rank ran out) and the number of samples
    in the whole step across all ranks (what the exact-mean loss divides by)."""

    step: int  # index within the epoch
    micro_batches: tuple[Batch, ...]
    global_count: int


class TrainLoader(Protocol):
    @property
    def steps_per_epoch(self) -> int: ...

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[TrainStep]:
        """This rank's steps of `epoch` from `start_step`: a pure function of
        (seed, epoch, the job's shape), which is how a checkpoint resumes mid-epoch."""
        ...


class TrainData(Protocol):
    """What the trainer reads from any data source: in-memory splits walked by
    the sharding plan (every rank cuts its part of each global batch of one
    seeded permutation) or prepared shards streamed per rank. Both give every
    training sample once per epoch across ranks and the same global count per
    step on every rank."""

    train: TrainLoader
    input_shape: tuple[int, ...]
    task: str  # "classification" (class index targets) or "regression" (real values)
    num_classes: int  # 0 for regression
    num_outputs: int  # what the model outputs per sample: a score per class, or one value per target
    train_size: int

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        """This rank's disjoint share of a whole evaluation split."""
        ...

    def example_batch(self) -> Batch:
        """A few samples, the same on every rank: one forward pass checks that
        the model's outputs fit the targets before the first step."""
        ...


def reader_context() -> Any:
    """The multiprocessing context of DataLoader reader processes: forked where
    the platform can, whatever the process's default. A forked reader inherits
    the dataset as it is in memory, even a class loaded from a file named by
    data.class_path, which a spawned one could not import (a worker started by
    a spawning parent would otherwise spawn its readers too)."""
    import multiprocessing

    return multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None


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
        self.task, self.num_outputs = splits.task, splits.num_outputs
        self.train_size = len(splits.train)
        plan = ShardedBatchPlan(len(splits.train), global_batch_size, env.world_size, env.rank, seed,
                                grad_accum_steps, drop_last)
        self.train = InMemoryLoader(splits.train, plan, env.device)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        return eval_shard(getattr(self.splits, split), self.env, batch_size)

    def example_batch(self) -> Batch:
        """The first samples of the validation split (the same on every rank)."""
        val = self.splits.val
        return Batch(val.inputs[:2].to(self.env.device), val.targets[:2].to(self.env.device))


def eval_shard(split: Split, env: DistEnv, batch_size: int) -> Iterator[Batch]:
    """This rank's contiguous share of an evaluation split, in batches. The
    shares partition the split (no padding, no duplicates), so sums reduced over
    ranks are exactly the single-process sums."""
    lo, hi = even_slices(len(split), env.world_size)[env.rank]
    for start in range(lo, hi, batch_size):
        end = min(start + batch_size, hi)
        yield Batch(split.inputs[start:end].to(env.device), split.targets[start:end].to(env.device))
