"""Data sources (what the samples are) and loaders (how each rank walks them).

`build_data` gives the trainer one object with `train` (steps_per_epoch and
`epoch(epoch, start_step)` yielding TrainSteps), `eval_batches(split, size)`,
`input_shape`, `num_classes` and `train_size`, whatever the source."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dist_train.comm import Comm
from dist_train.config import Config
from dist_train.data.loader import Batch, InMemoryData, InMemoryLoader, TrainData, TrainStep, eval_shard
from dist_train.data.sampler import ShardedBatchPlan
from dist_train.data.sources import Splits, build_splits, input_shape_of, task_of
from dist_train.env import DistEnv
from dist_train.resolve import Resolved
from dist_train.tasks import Task


@dataclass(frozen=True)
class DataFacts:
    """What is known of a data set before it is read: the shape of one input
    and the task, when the source tells (None: only the data itself will)."""

    input_shape: tuple[int, ...] | None
    task: Task | None


def check_data(cfg: Config, world_size: int) -> DataFacts:
    """The data mistakes that can be found without reading the samples (a
    missing data set, shards that do not divide among the readers, a custom
    source that does not import), for a launcher to refuse the job before it
    starts any worker."""
    d = cfg.data
    if d.source == "shards":
        from dist_train.data.shards import load_manifest

        # whether the shards divide among the streams' readers depends on the run's stream layout,
        # which a resumed run takes from its checkpoint: checked where the start is planned (dist_train.start)
        manifest = load_manifest(d.path)
        return DataFacts(manifest.input_shape, manifest.task)
    if d.source == "custom":
        from dist_train.data.custom import KEY
        from dist_train.user_code import resolve_callable

        resolve_callable(KEY, d.class_path)
        return DataFacts(None, None)
    return DataFacts(input_shape_of(d), task_of(d))


def build_data(cfg: Config, env: DistEnv, resolved: Resolved, comm: Comm | None = None,
               splits: Any = None) -> TrainData:
    """The data this rank trains and evaluates on; `comm`: how ranks agree on
    a broken data set (default: the job's); `splits`: the train, validation
    and test datasets of a custom source, when the caller has them already
    (the Python API). Each source opens its data (OPENERS); what it gives as
    in-memory splits is placed where data.cache says, the same for all."""
    d = cfg.data
    opened = OPENERS.get("custom" if splits is not None else d.source, _builtin)(cfg, env, resolved,
                                                                                 comm or Comm.of(env), splits)
    if not isinstance(opened, Splits):
        return opened  # streamed by the source's own loader (data.cache: none)
    if d.cache != "none":
        from dist_train.data.cache import place

        opened = place(opened, d.cache, env)
    return InMemoryData(opened, env, resolved.global_batch_size, resolved.grad_accum_steps, cfg.train.seed,
                        d.drop_last, on_host=d.cache == "host")


def _shards(cfg: Config, env: DistEnv, resolved: Resolved, comm: Comm, splits: Any) -> TrainData | Splits:
    """Prepared shards: streamed, or read whole and normalized for a cache."""
    d = cfg.data
    if d.cache == "none":
        from dist_train.data.stream import ShardData

        return ShardData(d, env, resolved.global_batch_size, resolved.grad_accum_steps, cfg.train.seed, comm)
    from dist_train.data.cache import shard_splits
    from dist_train.data.normalization import Normalizer
    from dist_train.data.stream import open_manifest

    manifest = open_manifest(d.path, comm, verify=d.verify)
    return shard_splits(manifest, Normalizer(manifest.normalization, manifest.input_shape, d.normalize, "cpu"))


def _custom(cfg: Config, env: DistEnv, resolved: Resolved, comm: Comm, splits: Any) -> TrainData | Splits:
    """The user's datasets (data.class_path, or given to the Python API):
    fetched item by item, or read whole for a cache."""
    from dist_train.data.custom import CustomData, check_splits, make_splits

    d = cfg.data
    splits = check_splits(splits, "the data given") if splits is not None else make_splits(d)
    custom = CustomData(splits, d, env, resolved.global_batch_size, resolved.grad_accum_steps, cfg.train.seed, comm)
    return custom if d.cache == "none" else custom.read_whole()


def _builtin(cfg: Config, env: DistEnv, resolved: Resolved, comm: Comm, splits: Any) -> TrainData | Splits:
    """A built-in or prepared-file source, held in memory."""
    return build_splits(cfg.data)


#: how each source opens its data; every other source is read whole (_builtin)
OPENERS: dict[str, Callable[[Config, DistEnv, Resolved, Comm, Any], TrainData | Splits]] = {
    "shards": _shards, "custom": _custom}

__all__ = ["Batch", "InMemoryData", "InMemoryLoader", "ShardedBatchPlan", "Splits", "build_data", "build_splits", "check_data",
           "DataFacts", "eval_shard", "TrainData", "TrainStep"]
