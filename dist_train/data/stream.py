"""Streaming prepared shards to every worker, each training sample exactly once
per epoch across ranks.

Every epoch, all ranks compute the same seeded permutation of the training
shards and deal them to S streams (S: the number of workers when the run
started): stream s takes shards perm[s::S], and DataLoader worker w of W
takes the stream's shards [w::W]. A loader worker reads its shards in order
(block by block), fills a buffer of about `data.shuffle_buffer` samples,
shuffles it (seeded by seed, epoch, stream and worker) and hands out chunks.
Each step's global batch is the next global_batch / S samples of every
stream. With as many workers as streams, rank r reads stream r alone (every
sample read once); resumed on another number of workers, a rank reads the
streams it takes its part of each global batch from (several, or one it
shares with other ranks), so the global batches are those of the
uninterrupted run, mid-epoch too (see `StreamLayout`).

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
from dist_train.data.loader import Batch, TrainStep, device_feed, ran_streamed, reader_context, start_readers
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
class StreamLayout:
    """How a run's training shards are streamed: `streams` logical streams (the
    number of workers when the run started), each read by `readers` DataLoader
    processes through a shuffle buffer of `buffer` samples. Each step's global
    batch is the next chunk of every stream, so the layout, not the number of
    workers, fixes the order: a run resumed on another number of workers takes
    the very same global batches, mid-epoch too. Part of the run: saved in
    every checkpoint."""

    streams: int
    readers: int
    buffer: int

    def state(self) -> list[int]:
        return [self.streams, self.readers, self.buffer]

    @classmethod
    def of_checkpoint(cls, manifest: dict) -> "StreamLayout":
        """The layout a checkpoint's run streamed with (its manifest records it;
        one written before it did streamed as its config and workers say)."""
        if "stream_layout" in manifest:
            return cls(*map(int, manifest["stream_layout"]))
        data = (manifest.get("config") or {}).get("data", {})
        return cls(int(manifest.get("world_size", 1)), int(data.get("loader_workers", 1)),
                   int(data.get("shuffle_buffer", 4096)))


@dataclass(frozen=True)
class EpochPlan:
    files: list[list[str]]  # each stream's shards this epoch
    counts: list[int]  # samples each stream holds this epoch
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


def my_part(streams: int, world_size: int, rank: int) -> tuple[list[int], int, int]:
    """Which streams a rank takes its part of each global batch from: all of
    `streams % world_size == rank` when there are at least as many streams as
    ranks (one each when equal), else the one stream `rank % streams`, whose
    chunk it shares with the other ranks on it: (streams, its share's index,
    ranks sharing)."""
    if world_size <= streams:
        return [s for s in range(streams) if s % world_size == rank], 0, 1
    sharing = [r for r in range(world_size) if r % streams == rank % streams]
    return [rank % streams], sharing.index(rank), len(sharing)


class ShardTrainLoader:
    checkpoint_optional = True  # checkpoints written before the layout was kept resume with a layout of their config's

    def __init__(self, manifest: Manifest, cfg: DataConfig, env: DistEnv, global_batch: int,
                 grad_accum_steps: int, seed: int, normalize: Normalizer) -> None:
        self.manifest, self.cfg, self.env = manifest, cfg, env
        self.global_batch, self.grad_accum_steps, self.seed = global_batch, grad_accum_steps, seed
        self.normalize = normalize
        self.drop_last = cfg.drop_last
        self.layout = StreamLayout(env.world_size, cfg.loader_workers, cfg.shuffle_buffer)  # a fresh run's

    # the layout as a checkpoint part: a resumed run streams as the run began, on any number of workers
    def state_dict(self) -> dict:
        return {"layout": self.layout.state()}

    def load_state_dict(self, state: dict) -> None:
        streams, readers, buffer = state["layout"]
        self.layout = StreamLayout(int(streams), int(readers), int(buffer))

    def resume_at(self, manifest: dict, step_in_epoch: int) -> int:
        """As the run streamed, on any number of workers; a run that kept its
        shards in memory (data.cache) walked them in another order: the
        interrupted epoch starts again."""
        self.layout = StreamLayout.of_checkpoint(manifest)
        return 0 if ran_streamed(manifest) is False else step_in_epoch

    def plan(self, epoch: int) -> EpochPlan:
        shards = self.manifest.splits["train"]
        order = np.random.default_rng([self.seed, epoch, 7]).permutation(len(shards))
        n = self.layout.streams
        per_stream = [[shards[i] for i in order[s::n]] for s in range(n)]
        counts = [sum(x.samples for x in mine) for mine in per_stream]
        b = self.global_batch // n
        steps = min(counts) // b if self.drop_last else max(math.ceil(c / b) for c in counts)
        return EpochPlan([[x.file for x in mine] for mine in per_stream], counts, steps)

    @property
    def steps_per_epoch(self) -> int:
        return self.plan(0).steps

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[TrainStep]:
        """This rank's steps of `epoch`, from `start_step` on, on the device and
        normalized. Resuming mid-epoch re-reads (without training on) the
        batches before `start_step`: each stream is a pure function of (seed,
        epoch, stream, the layout's readers and buffer)."""
        return device_feed(self._raw_steps(epoch, start_step), self.env.device, self._on_device)

    def _on_device(self, batch: Batch) -> Batch:
        return Batch(self.normalize(batch.inputs), batch.targets.to(self.env.device, non_blocking=True))

    def _stream(self, files: list[str], epoch: int, stream: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One stream's chunks, read by the layout's readers (a generator of its
        own: a DataLoader otherwise draws its base seed from the global RNG,
        which would shift dropout masks and break exact resume)."""
        workers = self.layout.readers
        data = _WorkerStream(self.manifest, files, self.seed, epoch, stream, self.layout.buffer, chunk=4096)
        return start_readers(DataLoader(data, batch_size=None, num_workers=workers,
                                        prefetch_factor=4 if workers else None, persistent_workers=False,
                                        generator=torch.Generator().manual_seed(epoch),
                                        worker_init_fn=ignore_stop_signals if workers else None,
                                        multiprocessing_context=reader_context() if workers else None,
                                        pin_memory=self.env.device.startswith("cuda")))

    def _raw_steps(self, epoch: int, start_step: int) -> Iterator[TrainStep]:
        plan = self.plan(epoch)
        b = self.global_batch // self.layout.streams
        mine, share, sharing = my_part(self.layout.streams, self.env.world_size, self.env.rank)
        batches = {s: _rebatch(self._stream(plan.files[s], epoch, s), b) for s in mine}
        accum = self.grad_accum_steps
        for step in range(plan.steps):
            sizes = [min(max(c - step * b, 0), b) for c in plan.counts]
            # micro-batch m: piece m of every stream's batch, shared among the ranks reading that stream;
            # so the ranks together hold what one process holds, micro-batch by micro-batch
            parts: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(accum)]
            for s in mine:
                if not sizes[s]:
                    continue  # this stream has run out: the rank takes part with what the others give
                x, y = next(batches[s])
                if step >= start_step:
                    for m, (a, z) in enumerate(even_slices(len(y), accum)):
                        lo, hi = even_slices(z - a, sharing)[share]
                        parts[m].append((x[a + lo:a + hi], y[a + lo:a + hi]))
            if step < start_step:
                continue
            yield TrainStep(step, tuple(self._joined(p) for p in parts), sum(sizes))

    def _joined(self, parts: list[tuple[torch.Tensor, torch.Tensor]]) -> Batch:
        if parts:
            return Batch(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
        # nothing for this rank in this micro-batch: it still takes part, with an empty batch
        x = torch.empty((0, *self.manifest.input_shape), dtype=getattr(torch, self.manifest.input_dtype))
        shape, dtype = self.manifest.expected_targets(0)
        return Batch(x, torch.from_numpy(np.empty(shape, dtype=dtype)))


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

    def __init__(self, cfg: DataConfig, env: DistEnv, global_batch: int, grad_accum_steps: int, seed: int,
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
        self.train = ShardTrainLoader(self.manifest, cfg, env, global_batch, grad_accum_steps, seed, self.normalize)

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
