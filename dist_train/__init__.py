"""dist-train: data-parallel training of feed-forward networks on one CPU or many GPUs."""

from dist_train.errors import ConfigError, DistTrainError


def fit(*args, **kwargs):  # noqa: ANN002, ANN003 - see dist_train.api.fit
    """Train from a script: see `dist_train.api.fit` (imported on first use,
    so that `import dist_train` stays light)."""
    from dist_train.api import fit as _fit

    return _fit(*args, **kwargs)


__all__ = ["ConfigError", "DistTrainError", "fit"]
__version__ = "0.1.0"
