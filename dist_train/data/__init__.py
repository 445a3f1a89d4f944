"""Data sources (what the samples are) and loaders (how each rank walks them)."""

from dist_train.data.loader import Batch, InMemoryLoader, eval_shard
from dist_train.data.sampler import ShardedBatchPlan
from dist_train.data.sources import Splits, build_splits

__all__ = ["Batch", "InMemoryLoader", "ShardedBatchPlan", "Splits", "build_splits", "eval_shard"]
