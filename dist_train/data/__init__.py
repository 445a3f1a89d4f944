"""Data sources (what the samples are) and loaders (how each rank walks them).

`build_data` gives the trainer one object with `train` (steps_per_epoch and
`epoch(epoch, start_step)` yielding TrainSteps), `eval_batches(split, size)`,
`input_shape`, `num_classes` and `train_size`, whatever the source."""

from __future__ import annotations

from dist_train.comm import Comm
from dist_train.config import Config
from dist_train.data.loader import Batch, InMemoryData, InMemoryLoader, TrainData, TrainStep, eval_shard
from dist_train.data.sampler import ShardedBatchPlan
from dist_train.data.sources import Splits, build_splits, input_shape_of
from dist_train.env import DistEnv
from dist_train.resolve import Resolved


def check_data(cfg: Config, world_size: int) -> tuple[int, ...]:
    """The data mistakes that can be found without reading the samples (a
    missing data set, shards that do not divide among the readers), for a
    launcher to refuse the job before it starts any worker. Returns the shape
    of one input, for checking the model against it."""
    d = cfg.data
    if d.source == "shards":
        from dist_train.data.shards import load_manifest
        from dist_train.data.stream import check_shard_readers

        manifest = load_manifest(d.path)
        check_shard_readers(manifest, world_size, d.loader_workers)
        return manifest.input_shape
    return input_shape_of(d)


def build_data(cfg: Config, env: DistEnv, resolved: Resolved, comm: Comm | None = None) -> TrainData:
    """The data this rank trains and evaluates on; `comm`: how ranks agree on
    a broken data set (default: the job's)."""
    d = cfg.data
    if d.source == "shards":
        from dist_train.data.stream import ShardData

        return ShardData(d, env, resolved.per_rank_batch_size, resolved.grad_accum_steps, cfg.train.seed, comm)
    return InMemoryData(build_splits(d), env, resolved.global_batch_size, resolved.grad_accum_steps,
                        cfg.train.seed, d.drop_last)


__all__ = ["Batch", "InMemoryData", "InMemoryLoader", "ShardedBatchPlan", "Splits", "build_data", "build_splits", "check_data",
           "eval_shard", "TrainData", "TrainStep"]
