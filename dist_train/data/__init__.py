"""Data sources (what the samples are) and loaders (how each rank walks them).

`build_data` gives the trainer one object with `train` (steps_per_epoch and
`epoch(epoch, start_step)` yielding TrainSteps), `eval_batches(split, size)`,
`input_shape`, `num_classes` and `train_size`, whatever the source."""

from __future__ import annotations

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
    (the Python API)."""
    d = cfg.data
    if d.source == "shards" and d.cache == "none":
        from dist_train.data.stream import ShardData

        return ShardData(d, env, resolved.global_batch_size, resolved.grad_accum_steps, cfg.train.seed, comm)
    if d.source == "shards":
        from dist_train.data.cache import shard_splits
        from dist_train.data.normalization import Normalizer
        from dist_train.data.stream import open_manifest

        manifest = open_manifest(d.path, comm or Comm.of(env), verify=d.verify)
        in_memory = shard_splits(manifest, Normalizer(manifest.normalization, manifest.input_shape, d.normalize, "cpu"))
    elif d.source == "custom" or splits is not None:
        from dist_train.data.custom import CustomData, check_splits, make_splits

        splits = check_splits(splits, "the data given") if splits is not None else make_splits(d)
        custom = CustomData(splits, d, env, resolved.global_batch_size, resolved.grad_accum_steps, cfg.train.seed,
                            comm or Comm.of(env))
        if d.cache == "none":
            return custom
        in_memory = custom.read_whole()
    else:
        in_memory = build_splits(d)
    if d.cache != "none":
        from dist_train.data.cache import place

        in_memory = place(in_memory, d.cache, env)
    return InMemoryData(in_memory, env, resolved.global_batch_size, resolved.grad_accum_steps, cfg.train.seed,
                        d.drop_last, on_host=d.cache == "host")

__all__ = ["Batch", "InMemoryData", "InMemoryLoader", "ShardedBatchPlan", "Splits", "build_data", "build_splits", "check_data",
           "DataFacts", "eval_shard", "TrainData", "TrainStep"]
