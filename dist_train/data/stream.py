"""Streaming prepared shards to every worker, each training sample exactly once
per epoch across ranks.

Every epoch, all ranks compute the same seeded permutation of the training
shards; rank r takes shards perm[r::N], and DataLoader worker w of W takes the
rank's shards [w::W]. A loader worker reads its shards in order (block by
block), fills a buffer of about `data.shuffle_buffer` samples, shuffles it
(seeded by seed, epoch, rank and worker) and hands out chunks. The main process
cuts the stream into per-rank batches of global_batch / N samples.

The number of training shards must divide by ranks x loader workers, so the
shards split evenly; the loader refuses other combinations with a message. Shard
sizes may differ by a sample or so: every rank knows every rank's sample count
from the manifest, so all ranks run the same number of steps (a rank that runs
out first takes part with empty batches) and every step's global sample count
is known without communication, as the exact-mean loss needs.

Before the first step the shards are verified (size, SHA-256, every block
readable with the fields and shapes the manifest promises), each rank checking
a share and all ranks learning every problem, so a broken data set stops every
rank together with the same message.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dist_train.stop_request import ignore_stop_signals
from dist_train.comm import Comm
from dist_train.config import DataConfig
from dist_train.data.loader import Batch, TrainStep, device_feed, reader_context, start_readers
from dist_train.data.normalization import Normalizer
from dist_train.data.sampler import even_slices
from dist_train.data.shards import SPLITS, Manifest, iter_blocks, load_manifest, verify_shard
from dist_train.env import DistEnv
from dist_train.errors import DistTrainError


def open_manifest(path: str, comm: Comm, verify: bool = True) -> Manifest:
    """Load the manifest and (when `verify`) check every shard, each rank a
    share of them, with every rank reaching the same verdict."""
    problems: list[str] = []
    manifest = None
    try:
        manifest = load_manifest(path)
    except DistTrainError as exc:
        problems.append(str(exc))
    if manifest is not None and verify:
        all_shards = [info for split in SPLITS for info in manifest.splits[split]]
        for info in all_shards[comm.rank::comm.world_size]:
            problems += verify_shard(manifest, info)
    comm.agree_on_errors(problems, "the prepared data set is not usable")
    assert manifest is not None
    return manifest


class _WorkerStream(IterableDataset):
    """What one DataLoader worker (or the main process) reads in one epoch."""

    def __init__(self, manifest: Manifest, files: list[str], seed: int, epoch: int, rank: int,
                 shuffle_buffer: int, chunk: int) -> None:
        self.manifest, self.files = manifest, files
        self.seed, self.epoch, self.rank = seed, epoch, rank
        self.shuffle_buffer, self.chunk = shuffle_buffer, chunk

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker])
        mine = list(self.files[worker::workers])
        rng.shuffle(mine)
        pending_x: list[np.ndarray] = []
        pending_y: list[np.ndarray] = []
        held = 0
        for name in mine:
            for x, y in iter_blocks(self.manifest.root / name):
                pending_x.append(x)
                pending_y.append(y)
                held += len(y)
                if held >= self.shuffle_buffer:
                    yield from self._emit(pending_x, pending_y, rng)
                    pending_x, pending_y, held = [], [], 0
        if held:
            yield from self._emit(pending_x, pending_y, rng)

    def _emit(self, xs: list[np.ndarray], ys: list[np.ndarray], rng: np.random.Generator):
        x, y = np.concatenate(xs), np.concatenate(ys)
        order = rng.permutation(len(y))
        x, y = torch.from_numpy(x[order]), torch.from_numpy(y[order])
        for start in range(0, len(y), self.chunk):
            yield x[start:start + self.chunk], y[start:start + self.chunk]


@dataclass(frozen=True)
class EpochPlan:
    files: list[str]  # this rank's shards this epoch
    rank_counts: list[int]  # samples each rank holds this epoch
    steps: int


def check_shard_readers(manifest: Manifest, world_size: int, loader_workers: int) -> None:
    """The training shards must divide among ranks x loader workers, or some
    samples would be read twice or some ranks would wait."""
    shards = len(manifest.splits["train"])
    workers = max(loader_workers, 1)
    readers = world_size * workers
    if shards % readers:
        suggestion = readers * max(1, round(shards / readers))
        raise DistTrainError(
            f"the training split of {manifest.root} has {shards} shards, which does not divide among {world_size} "
            f"rank(s) x {workers} loader worker(s) = {readers} readers (each sample must be read once per epoch); "
            f"prepare a multiple of {readers} shards (`dist-train prepare ... --shards {suggestion}`) or change "
            f"data.loader_workers")


class ShardTrainLoader:
    def __init__(self, manifest: Manifest, cfg: DataConfig, env: DistEnv, per_rank_batch: int,
                 grad_accum_steps: int, seed: int, normalize: Normalizer) -> None:
        check_shard_readers(manifest, env.world_size, cfg.loader_workers)
        self.manifest, self.cfg, self.env = manifest, cfg, env
        self.per_rank_batch, self.grad_accum_steps, self.seed = per_rank_batch, grad_accum_steps, seed
        self.normalize = normalize
        self.drop_last = cfg.drop_last

    def plan(self, epoch: int) -> EpochPlan:
        shards = self.manifest.splits["train"]
        order = np.random.default_rng([self.seed, epoch, 7]).permutation(len(shards))
        per_rank = [[shards[i] for i in order[r::self.env.world_size]] for r in range(self.env.world_size)]
        counts = [sum(s.samples for s in mine) for mine in per_rank]
        b = self.per_rank_batch
        steps = min(counts) // b if self.drop_last else max(math.ceil(c / b) for c in counts)
        return EpochPlan([s.file for s in per_rank[self.env.rank]], counts, steps)

    @property
    def steps_per_epoch(self) -> int:
        return self.plan(0).steps

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[TrainStep]:
        """This rank's steps of `epoch`, from `start_step` on, on the device and
        normalized. Resuming mid-epoch re-reads (without training on) the
        batches before `start_step`: the stream is a pure function of (seed,
        epoch, rank, loader workers)."""
        return device_feed(self._raw_steps(epoch, start_step), self.env.device, self._on_device)

    def _on_device(self, batch: Batch) -> Batch:
        return Batch(self.normalize(batch.inputs), batch.targets.to(self.env.device, non_blocking=True))

    def _raw_steps(self, epoch: int, start_step: int) -> Iterator[TrainStep]:
        plan = self.plan(epoch)
        b = self.per_rank_batch
        stream = _WorkerStream(self.manifest, plan.files, self.seed, epoch, self.env.rank,
                               self.cfg.shuffle_buffer, chunk=4096)
        workers = self.cfg.loader_workers
        # A generator of its own: a DataLoader otherwise draws its base seed from the
        # global RNG, which would shift dropout masks (and break exact resume).
        chunks = start_readers(DataLoader(stream, batch_size=None, num_workers=workers,
                                          prefetch_factor=4 if workers else None, persistent_workers=False,
                                          generator=torch.Generator().manual_seed(epoch),
                                          worker_init_fn=ignore_stop_signals if workers else None,
                                          multiprocessing_context=reader_context() if workers else None,
                                          pin_memory=self.env.device.startswith("cuda")))
        batches = _rebatch(chunks, b)
        for step in range(plan.steps):
            sizes = [min(max(c - step * b, 0), b) for c in plan.rank_counts]
            x, y = next(batches) if sizes[self.env.rank] else (None, None)
            if step < start_step:
                continue
            if x is None:  # this rank has run out: it still takes part, with an empty batch
                x = torch.empty((0, *self.manifest.input_shape), dtype=getattr(torch, self.manifest.input_dtype))
                shape, dtype = self.manifest.expected_targets(0)
                y = torch.from_numpy(np.empty(shape, dtype=dtype))
            micro = tuple(Batch(x[lo:hi], y[lo:hi]) for lo, hi in even_slices(len(y), self.grad_accum_steps))
            yield TrainStep(step, micro, sum(sizes))


def _rebatch(chunks: Iterator[tuple[torch.Tensor, torch.Tensor]], size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Cut a stream of chunks into batches of `size` (the last one shorter).
    Whole batches inside a chunk are views; only batches that straddle two
    chunks are copied."""
    carry_x: list[torch.Tensor] = []
    carry_y: list[torch.Tensor] = []
    held = 0
    for x, y in chunks:
        start = 0
        if held:  # complete the batch begun in earlier chunks
            take = min(size - held, len(y))
            carry_x.append(x[:take])
            carry_y.append(y[:take])
            held += take
            start = take
            if held < size:
                continue
            yield torch.cat(carry_x), torch.cat(carry_y)
            carry_x, carry_y, held = [], [], 0
        while len(y) - start >= size:
            yield x[start:start + size], y[start:start + size]
            start += size
        if start < len(y):
            carry_x, carry_y, held = [x[start:]], [y[start:]], len(y) - start
    if held:
        yield torch.cat(carry_x), torch.cat(carry_y)


class ShardData:
    """Prepared shards: a streaming training loader and complete evaluation reads."""

    def __init__(self, cfg: DataConfig, env: DistEnv, per_rank_batch: int, grad_accum_steps: int, seed: int,
                 comm: Comm | None = None) -> None:
        if not cfg.path:
            raise DistTrainError("data.source is 'shards' but data.path is empty; set data.path to a directory "
                                 "written by `dist-train prepare`")
        self.manifest = open_manifest(cfg.path, comm or Comm.of(env), verify=cfg.verify)
        self.env = env
        self.normalize = Normalizer(self.manifest.normalization, self.manifest.input_shape, cfg.normalize,
                                    env.device)
        self.input_shape = self.manifest.input_shape
        self.num_classes, self.task = self.manifest.num_classes, self.manifest.task
        self.num_outputs = self.manifest.num_outputs
        self.train_size = self.manifest.num_samples("train")
        self.input_spec = self.manifest.input_spec(self.normalize)
        self.target_shape = self.manifest.target_shape
        self.train = ShardTrainLoader(self.manifest, cfg, env, per_rank_batch, grad_accum_steps, seed, self.normalize)

    def example_batch(self) -> Batch:
        """The first samples of the validation split (the same on every rank)."""
        x, y = next(iter_blocks(self.manifest.root / self.manifest.splits["val"][0].file))
        return Batch(self.normalize(torch.from_numpy(x[:2])), torch.from_numpy(y[:2]).to(self.env.device))

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        """This rank's shards of `split` (round-robin), read completely once: the
        shards partition the split, so reduced sums are exact."""
        for info in self.manifest.splits[split][self.env.rank::self.env.world_size]:
            for x, y in iter_blocks(self.manifest.root / info.file):
                for start in range(0, len(y), batch_size):
                    yield Batch(self.normalize(torch.from_numpy(x[start:start + batch_size])),
                                torch.from_numpy(y[start:start + batch_size]).to(self.env.device))
