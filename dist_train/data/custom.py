"""Your own data: `data.source: custom`, where `data.class_path(**init_args)`
returns the train, validation and test splits as map-style
`torch.utils.data.Dataset`s whose items are (input tensor, target).

The training split is walked by the same sampler plan as in-memory data (one
seeded permutation of its indices per epoch; rank r takes its contiguous part
of each global batch), so every sample is used once per epoch across ranks,
a ragged last batch is still the exact mean over its samples, and a
checkpoint resumes mid-epoch exactly. Items are fetched by `data.loader_workers`
DataLoader processes (through the dataset's `__getitems__` when it has one:
DataLoader calls it with a whole micro-batch of indices; it may return the
items, or the batch as two stacked tensors) and collated by stacking.
Evaluation splits are dealt to ranks in contiguous shares.

Targets decide the task: integer class indices (classification; the number of
classes is the dataset's `num_classes` or `len(classes)` attribute, else the
largest training target + 1) or floating-point values (regression, one per
sample or a vector). Inputs are normalized with the training split's
statistics unless `data.normalize: none`.

Those statistics (and the largest class index, when the dataset does not say
how many classes it has) come from one pass over the training split shared by
the ranks: the split is cut into chunks of STATS_CHUNK items, rank r reads
chunks r, r + N, r + 2N, ... and the chunks' float64 sums are all-reduced
(each chunk's row is filled by one rank, zeros elsewhere: exact) and added in
chunk order. The chunks and that order do not depend on the number of
workers, so N workers get the very bits one process gets, and the job reads
the split once, not once per rank."""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dist_train.comm import Comm
from dist_train.config import DataConfig
from dist_train.data.loader import Batch, PlannedLoader, TrainStep, device_feed, reader_context, start_readers
from dist_train.data.normalization import Normalizer, Stats, Sums, chunk_sums, fold_sums, stats_of_sums
from dist_train.data.sampler import ShardedBatchPlan, even_slices
from dist_train.data.sources import InputSpec
from dist_train.env import DistEnv
from dist_train.errors import ConfigError
from dist_train.stop_request import ignore_stop_signals
from dist_train.tasks import Task
from dist_train.user_code import call_with, failure, resolve_callable

KEY = "data.class_path"
SPLIT_NAMES = ("train", "val", "test")
# Items per chunk of the pass over the training split. Fixed, never derived
# from the number of workers: the chunks' float64 sums, added in chunk order,
# are then the same bits on any number of workers.
STATS_CHUNK = 4096


def make_splits(cfg: DataConfig) -> tuple[Dataset, Dataset, Dataset]:
    """Call the user's factory and check what it returned."""
    factory = resolve_callable(KEY, cfg.class_path)
    returned = call_with(KEY, factory, cfg.init_args, {})
    return check_splits(returned, getattr(factory, "__qualname__", cfg.class_path))


def check_splits(returned: Any, who: str) -> tuple[Dataset, Dataset, Dataset]:
    if isinstance(returned, dict) and set(returned) >= set(SPLIT_NAMES):
        returned = tuple(returned[name] for name in SPLIT_NAMES)
    if not isinstance(returned, (tuple, list)) or len(returned) != 3:
        raise ConfigError(KEY, f"{who} returned {_kind(returned)}, not the train, validation and test datasets",
                          "return a tuple (train, val, test) of map-style torch Datasets, or a dict with those keys")
    for name, split in zip(SPLIT_NAMES, returned):
        if not (hasattr(split, "__getitem__") and hasattr(split, "__len__")):
            raise ConfigError(KEY, f"the {name} split from {who} is {_kind(split)}, not a map-style dataset",
                              "give it __getitem__ and __len__ (torch.utils.data.Dataset)")
        if len(split) == 0:
            raise ConfigError(KEY, f"the {name} split from {who} is empty")
    return tuple(returned)  # type: ignore[return-value]


def _kind(value: Any) -> str:
    return f"a {type(value).__name__}" + (f" of {len(value)}" if isinstance(value, (tuple, list)) else "")


def collate(items: Sequence[Any], indices: Sequence[int] | None = None,
            split: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, target) items to two stacked tensors; a wrong item is named by
    its split and index (`indices`: the items' indices in their split). A
    `__getitems__` may also return the batch itself, a tuple of two stacked
    tensors (inputs, targets): then nothing is left to stack."""
    if (isinstance(items, tuple) and len(items) == 2 and all(isinstance(t, torch.Tensor) for t in items)
            and items[0].dim() >= 1 and items[1].dim() >= 1 and len(items[0]) == len(items[1])):
        return items[0], items[1]
    names = list(indices) if indices is not None and len(indices) == len(items) else list(range(len(items)))

    def item(i: int) -> str:
        return f"{_items(split)} {names[i]}" if indices is not None else f"dataset item {names[i]}"

    inputs, targets = [], []
    for i, pair in enumerate(items):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ConfigError(KEY, f"{item(i)} is {_kind(pair)}; items must be (input tensor, target) pairs")
        x, y = pair
        inputs.append(torch.as_tensor(x))
        targets.append(torch.as_tensor(y))
    for what, stacked in (("inputs", inputs), ("targets", targets)):
        for i, t in enumerate(stacked):
            if t.shape != stacked[0].shape:
                raise ConfigError(KEY, f"{item(0)} and {item(i)} have {what} of different shapes "
                                  f"({tuple(stacked[0].shape)} and {tuple(t.shape)}); every item's {what} must "
                                  "have the same shape")
    return torch.stack(inputs), torch.stack(targets)


def fetch_items(dataset: Dataset, indices: list[int], split: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The items at `indices` of a split, stacked; a failure in the dataset's
    own code is named with the split, the item and the place in that code."""
    many = getattr(dataset, "__getitems__", None)
    if many is not None:
        try:
            items = many(indices)
        except Exception as exc:
            span = f"{indices[0]}..{indices[-1]}" if len(indices) > 1 else f"{indices[0]}"
            raise ConfigError(KEY, f"__getitems__ for {_items(split)}s {span} failed: {failure(exc)}") from None
        return collate(items, indices if not isinstance(items, tuple) else None, split)
    items = []
    for i in indices:
        try:
            items.append(dataset[i])
        except Exception as exc:
            raise ConfigError(KEY, f"reading {_items(split)} {i} failed: {failure(exc)}") from None
    return collate(items, indices, split)


def _items(split: str | None) -> str:
    return f"the {split} split's item" if split else "item"


@dataclass(frozen=True)
class _Failed:
    """A batch a reader process could not make: the error travels as data and
    is raised in the rank itself, whole."""

    error: ConfigError


class _Split(Dataset):
    """One split of the user's data as DataLoader readers fetch it: a whole
    batch of indices at a time (`fetch_items`), a mistake returned as `_Failed`."""

    def __init__(self, dataset: Dataset, split: str) -> None:
        self.dataset, self.split = dataset, split

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.__getitems__([index])

    def __getitems__(self, indices: list[int]) -> Any:
        try:
            return fetch_items(self.dataset, list(indices), self.split)
        except ConfigError as exc:
            return _Failed(exc)


def _as_batch(batch: Any) -> Any:
    return batch


class CustomData:
    """The user's datasets behind the TrainData interface."""

    def __init__(self, splits: tuple[Dataset, Dataset, Dataset], cfg: DataConfig, env: DistEnv,
                 global_batch_size: int, grad_accum_steps: int, seed: int, comm: Comm | None = None) -> None:
        self.train_set, self.val_set, self.test_set = splits
        self.cfg, self.env = cfg, env
        x, y = fetch_items(self.train_set, [0], "train")
        self.input_shape = tuple(x.shape[1:])
        self.input_dtype = x.dtype
        task = Task.of_targets(y.dtype, y.dim())
        if task is None:
            raise ConfigError(KEY, f"dataset targets of dtype {y.dtype} and shape {tuple(y.shape[1:])} are neither class "
                              "indices (an integer per item) nor real values (float)")
        self.task, self.target_shape = task, tuple(y.shape[1:])
        declared = _declared_classes(self.train_set) if task.classifies else 0  # None: the targets tell
        self.train_size = len(self.train_set)
        scan = scan_training_split(self.train_set, self.input_shape, comm or Comm.of(env), cfg.loader_workers,
                                   stats=cfg.normalize != "none", largest_target=declared is None, device=env.device)
        self.num_classes = declared if declared is not None else scan.largest_target + 1
        self.num_outputs = task.num_outputs(self.num_classes, self.target_shape)
        self.stats = scan.stats
        self.normalize = Normalizer(self.stats, self.input_shape, cfg.normalize, env.device)
        self.input_spec = InputSpec(self.input_shape, str(self.input_dtype).removeprefix("torch."),
                                    self.normalize.preprocess, self.normalize.mode, _class_names(self.train_set),
                                    {"name": "custom"})
        plan = ShardedBatchPlan(self.train_size, global_batch_size, env.world_size, env.rank, seed,
                                grad_accum_steps, cfg.drop_last)
        self.train = CustomLoader(self, plan)

    def batch(self, x: torch.Tensor, y: torch.Tensor) -> Batch:
        return Batch(self.normalize(x), y.to(self.env.device, non_blocking=True))

    def empty_batch(self, on_device: bool = True) -> Batch:
        x = torch.empty((0, *self.input_shape), dtype=self.input_dtype)
        y = torch.empty((0, *self.target_shape), dtype=self.task.target_dtype)
        return self.batch(x, y) if on_device else Batch(x, y)

    def example_batch(self) -> Batch:
        return self.batch(*fetch_items(self.val_set, list(range(min(2, len(self.val_set)))), "val"))

    def read_whole(self) -> Any:
        """Every split, read once and normalized on the CPU (data.cache)."""
        from dist_train.data.cache import dataset_splits

        on_cpu = Normalizer(self.stats, self.input_shape, self.cfg.normalize, "cpu")

        def batches(dataset: Dataset, split: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            chunks = [list(range(lo, min(lo + 4096, len(dataset)))) for lo in range(0, len(dataset), 4096)]
            for x, y in _loader(dataset, split, chunks, self.cfg.loader_workers, seed=0):
                yield on_cpu(x), y

        return dataset_splits((batches(d, s) for d, s in zip((self.train_set, self.val_set, self.test_set), SPLIT_NAMES)),
                              self.input_shape, self.num_classes, self.task, self.input_spec)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        dataset = {"val": self.val_set, "test": self.test_set, "train": self.train_set}[split]
        lo, hi = even_slices(len(dataset), self.env.world_size)[self.env.rank]
        chunks = [list(range(start, min(start + batch_size, hi))) for start in range(lo, hi, batch_size)]
        for x, y in _loader(dataset, split, chunks, self.cfg.loader_workers, seed=0):
            yield self.batch(x, y)


class CustomLoader(PlannedLoader):
    def __init__(self, data: CustomData, plan: ShardedBatchPlan) -> None:
        self.data, self.plan = data, plan

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[TrainStep]:
        on_device = lambda b: self.data.batch(b.inputs, b.targets)  # noqa: E731 - normalized on the device
        return device_feed(self._raw_steps(epoch, start_step), self.data.env.device, on_device)

    def _raw_steps(self, epoch: int, start_step: int) -> Iterator[TrainStep]:
        steps = list(self.plan.epoch(epoch, start_step))
        wanted = [idx.tolist() for s in steps for idx in s.micro_indices if len(idx)]
        fetched = _loader(self.data.train_set, "train", wanted, self.data.cfg.loader_workers, seed=epoch,
                          pin=self.data.env.device.startswith("cuda"))
        try:
            for s in steps:
                micro = tuple(Batch(*next(fetched)) if len(idx) else self.data.empty_batch(on_device=False)
                              for idx in s.micro_indices)
                yield TrainStep(s.step, micro, s.global_count)
        finally:  # a stop or an error mid-epoch: the readers end with it
            fetched.close()


def _loader(dataset: Dataset, split: str, batches: list[list[int]], workers: int, seed: int,
            pin: bool = False) -> Generator:
    """Each list of indices fetched as one batch, in order, by `workers`
    DataLoader processes (0: here). A generator of its own: a DataLoader
    otherwise draws its base seed from the global RNG, which would shift
    dropout masks (and break exact resume). A bad item is raised here, named."""
    if not batches:
        return _raising(iter(()))
    loader = DataLoader(_Split(dataset, split), batch_sampler=batches, num_workers=workers, collate_fn=_as_batch,
                        prefetch_factor=4 if workers else None, generator=torch.Generator().manual_seed(seed),
                        worker_init_fn=ignore_stop_signals if workers else None,
                        multiprocessing_context=reader_context() if workers else None, pin_memory=pin)
    return _raising(start_readers(loader))


def _raising(batches: Iterator) -> Iterator:
    try:
        for batch in batches:
            if isinstance(batch, _Failed):
                raise batch.error
            yield batch
    finally:  # an error, or a consumer that stops early: the readers end now (start_readers)
        close = getattr(batches, "close", None)
        if close is not None:
            close()


def _class_names(dataset: Dataset) -> tuple[str, ...] | None:
    """The dataset's `classes` when they are names (torchvision's convention)."""
    classes = getattr(dataset, "classes", None)
    if isinstance(classes, (list, tuple)) and classes and all(isinstance(c, str) for c in classes):
        return tuple(classes)
    return None


def _declared_classes(dataset: Dataset) -> int | None:
    """The number of classes the dataset says it has (`num_classes`, or
    `len(classes)`); None: only its targets tell."""
    if isinstance(getattr(dataset, "num_classes", None), int):
        return int(dataset.num_classes)
    classes = getattr(dataset, "classes", None)
    if isinstance(classes, (list, tuple)) and classes:
        return len(classes)
    return None


@dataclass(frozen=True)
class SplitScan:
    stats: Stats  # {} when not asked for
    largest_target: int  # -1 when not asked for


def scan_training_split(dataset: Dataset, input_shape: tuple[int, ...], comm: Comm, workers: int, *,
                        stats: bool, largest_target: bool, device: str = "cpu",
                        chunk: int = STATS_CHUNK) -> SplitScan:
    """Collective. The normalization statistics of the training split (`stats`)
    and its largest class index (`largest_target`), from one pass the ranks
    share (see the module's docstring): every chunk's float64 sums, added in
    chunk order on every rank, as one process adds them."""
    if not (stats or largest_target):
        return SplitScan({}, -1)
    chunks = [(lo, min(lo + chunk, len(dataset))) for lo in range(0, len(dataset), chunk)]
    features = int(np.prod(input_shape, dtype=np.int64)) if stats else 0
    targets: list[np.ndarray] = []  # each chunk's (smallest, largest) target

    def sums() -> Iterator[Sums]:
        for (lo, hi), row in zip(chunks, _rows_in_chunk_order(dataset, chunks, comm, workers, features,
                                                              largest_target, device)):
            targets.append(row[2 * features:])
            yield hi - lo, row[:features], row[features:2 * features]

    found = fold_sums(sums())
    if largest_target and min(t[0] for t in targets) < 0:
        raise ConfigError(KEY, "a class target is negative; class indices run from 0 to (classes - 1)")
    return SplitScan(stats_of_sums(found, input_shape) if stats else {},
                     int(max(t[1] for t in targets)) if largest_target else -1)


def _rows_in_chunk_order(dataset: Dataset, chunks: list[tuple[int, int]], comm: Comm, workers: int, features: int,
                         target_range: bool, device: str) -> Iterator[np.ndarray]:
    """Collective. Every chunk's row, in chunk order, on every rank: the
    float64 sums of its `features` inputs and of their squares (chunk_sums),
    then its smallest and largest target when `target_range`. Rank r reads
    chunks r, r + N, ... (`workers` DataLoader processes fetch them ahead);
    each round every rank fills its chunk's row of a (ranks, row) tensor,
    zeros elsewhere, and one all-reduce gives every rank every row exactly
    (x + 0 is x). An error reading a chunk is raised on every rank together,
    before the all-reduce it would otherwise leave the others waiting in."""
    ranks, rank = comm.world_size, comm.rank
    fetched = _loader(dataset, "train", [list(range(lo, hi)) for lo, hi in chunks[rank::ranks]], workers, seed=0)
    try:
        for first in range(0, len(chunks), ranks):
            rows = np.zeros((ranks, 2 * features + (2 if target_range else 0)), dtype=np.float64)
            error = None
            if first + rank < len(chunks):
                try:
                    x, y = next(fetched)
                    if features:
                        _, rows[rank, :features], rows[rank, features:2 * features] = chunk_sums(x.numpy())
                    if target_range:
                        rows[rank, 2 * features:] = (float(y.min()), float(y.max()))
                except Exception as exc:  # the user's __getitem__, a bad item: raised below on every rank
                    error = exc
            comm.raise_together(error)
            rows = comm.all_reduce_sum(torch.from_numpy(rows).to(device)).cpu().numpy()
            yield from rows[:len(chunks) - first]
    finally:  # readers stopped now, whichever rank failed
        fetched.close()
