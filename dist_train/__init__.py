"""dist-train: data-parallel training of feed-forward networks on one CPU or many GPUs."""

from dist_train.errors import ConfigError, DistTrainError

__all__ = ["ConfigError", "DistTrainError"]
__version__ = "0.1.0"
