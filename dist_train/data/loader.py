"""Loaders that turn a plan of indices into tensors on the worker's device."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from dist_train.data.normalization import Preprocess
from dist_train.data.sampler import ShardedBatchPlan, even_slices
from dist_train.data.sources import InputSpec, Split, Splits
from dist_train.env import DistEnv
from dist_train.tasks import Task


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

    def resume_at(self, manifest: dict[str, Any], step_in_epoch: int) -> int:
        """Take the position of the checkpoint `manifest` describes (interrupted
        after `step_in_epoch` steps of its epoch); return the step of that epoch
        this loader continues at: that one, or 0 when it walks the samples in
        another order than the run did (no sample twice in one epoch)."""
        ...


class TrainData(Protocol):
    """What the trainer reads from any data source: in-memory splits walked by
    the sharding plan (every rank cuts its part of each global batch of one
    seeded permutation) or prepared shards streamed per rank. Both give every
    training sample once per epoch across ranks and the same global count per
    step on every rank."""

    train: TrainLoader
    input_shape: tuple[int, ...]
    task: Task
    num_classes: int  # 0 for regression
    num_outputs: int  # what the model outputs per sample: a score per class, or one value per target
    train_size: int
    input_spec: InputSpec  # raw inputs and their preprocessing: what a model bundle carries
    target_shape: tuple[int, ...]  # one sample's target: () for a class index or one value, (K,) for K values

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


def start_readers(loader: Any) -> Iterator:
    """The iterator of a DataLoader, its reader processes started with the stop
    signals held (dist_train.stop_request.stop_signals_held): a SIGTERM that
    arrives as they fork is the rank's, never a reader's death. The readers
    are shut down as soon as the iterator ends, fails or is closed, not when
    it is garbage collected: one left running by an error (its frame held by
    the traceback) kept the process from exiting after its message."""
    from dist_train.stop_request import stop_signals_held

    if not getattr(loader, "num_workers", 0):
        return iter(loader)
    with stop_signals_held():
        readers = iter(loader)
    return _shut_down_when_done(readers)


def _shut_down_when_done(readers: Iterator) -> Iterator:
    try:
        yield from readers
    finally:
        shutdown = getattr(readers, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def device_feed(steps: Iterable[TrainStep], device: str,
                transform: Callable[[Batch], Batch] | None = None) -> Iterator[TrainStep]:
    """Steps whose batches are on `device`, `transform` applied there (the
    normalization). On a GPU, each step's batches are copied from (pinned)
    host memory on a side stream while the step before it trains, with
    non-blocking copies; elsewhere batches are only transformed."""
    def finish(step: TrainStep) -> TrainStep:
        if transform is None:
            return step
        return TrainStep(step.step, tuple(transform(b) for b in step.micro_batches), step.global_count)

    if not device.startswith("cuda"):
        for step in steps:
            yield finish(step)
        return
    side = torch.cuda.Stream(device)
    ahead: TrainStep | None = None
    for step in steps:
        with torch.cuda.stream(side):  # enqueued now, overlapping the step the caller is training
            moved = TrainStep(step.step, tuple(Batch(_pinned(b.inputs).to(device, non_blocking=True),
                                                     _pinned(b.targets).to(device, non_blocking=True))
                                               for b in step.micro_batches), step.global_count)
        if ahead is not None:
            yield finish(_arrived(ahead, side))
        ahead = moved
    if ahead is not None:
        yield finish(_arrived(ahead, side))


def _pinned(t: torch.Tensor) -> torch.Tensor:
    return t if t.is_cuda or t.is_pinned() else t.pin_memory()


def _arrived(step: TrainStep, side: Any) -> TrainStep:
    """The main stream waits for the side stream's copies, and the copies'
    memory is kept for the main stream's use."""
    main = torch.cuda.current_stream()
    main.wait_stream(side)
    for b in step.micro_batches:
        b.inputs.record_stream(main)
        b.targets.record_stream(main)
    return step


def ran_streamed(manifest: dict[str, Any]) -> bool | None:
    """Whether the run that wrote a checkpoint streamed its shards (in the
    streams' order) rather than walking a sharding plan over samples in memory;
    None when its manifest does not say."""
    data = (manifest.get("config") or {}).get("data")
    if not data:
        return None
    return data.get("source") == "shards" and data.get("cache", "none") == "none"


class PlannedLoader:
    """A training split walked by a `ShardedBatchPlan` (in memory, or a custom
    dataset's items fetched): the order is a function of the seed, the epoch and
    the global batch, so a run resumed on any number of workers continues
    mid-epoch, unless the run streamed its shards instead."""

    plan: ShardedBatchPlan

    @property
    def steps_per_epoch(self) -> int:
        return self.plan.steps_per_epoch

    def resume_at(self, manifest: dict[str, Any], step_in_epoch: int) -> int:
        return 0 if ran_streamed(manifest) else step_in_epoch


class InMemoryLoader(PlannedLoader):
    """The training split in memory, walked by a `ShardedBatchPlan`: on the
    device (batches are cut there), or in host memory (`on_host`: batches are
    cut on the host and fed to the device ahead of their step)."""

    def __init__(self, split: Split, plan: ShardedBatchPlan, device: str, on_host: bool = False) -> None:
        where = "cpu" if on_host else device
        self.inputs, self.targets = split.inputs.to(where), split.targets.to(where)
        if on_host and device.startswith("cuda"):
            self.inputs, self.targets = self.inputs.pin_memory(), self.targets.pin_memory()
        self.plan, self.device, self.on_host = plan, device, on_host

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[TrainStep]:
        steps = self._steps(epoch, start_step)
        return device_feed(steps, self.device) if self.on_host else steps

    def _steps(self, epoch: int, start_step: int) -> Iterator[TrainStep]:
        where = self.inputs.device
        for step in self.plan.epoch(epoch, start_step):
            micro = []
            for idx in step.micro_indices:
                idx = idx.to(where, non_blocking=True)
                micro.append(Batch(self.inputs.index_select(0, idx), self.targets.index_select(0, idx)))
            yield TrainStep(step.step, tuple(micro), step.global_count)


class InMemoryData:
    """Splits held in memory: the sharding plan for training, contiguous shares
    for evaluation."""

    def __init__(self, splits: Splits, env: DistEnv, global_batch_size: int, grad_accum_steps: int, seed: int,
                 drop_last: bool, on_host: bool = False) -> None:
        self.splits, self.env = splits, env
        self.input_shape, self.num_classes = splits.input_shape, splits.num_classes
        self.task, self.num_outputs = splits.task, splits.num_outputs
        self.train_size = len(splits.train)
        self.input_spec = splits.input_spec or InputSpec(splits.input_shape, "float32", Preprocess(None, None), "none")
        self.target_shape = tuple(splits.train.targets.shape[1:])
        plan = ShardedBatchPlan(len(splits.train), global_batch_size, env.world_size, env.rank, seed,
                                grad_accum_steps, drop_last)
        self.train = InMemoryLoader(splits.train, plan, env.device, on_host)

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
