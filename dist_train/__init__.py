"""dist-train: data-parallel training of feed-forward networks on one CPU or many GPUs.

    import dist_train
    result = dist_train.fit("configs/quickstart.yaml")        # train (one process, or a worker of a job)
    dist_train.export("runs/quickstart", "model.pt")          # a bundle, and model.pt2 for torch alone
    model = dist_train.load_model("model.pt")                 # raw inputs in, outputs out
    dist_train.predict(model, "new.csv", out="predictions.csv")
    dist_train.evaluate(model)                                # the run's own test split, or data=...

Each function is imported on first use, so that `import dist_train` stays light."""

from dist_train.errors import ConfigError, DistTrainError


def fit(*args, **kwargs):  # noqa: ANN002, ANN003 - see dist_train.api.fit
    """Train from a script: see `dist_train.api.fit`."""
    from dist_train.api import fit as _fit

    return _fit(*args, **kwargs)


def export(*args, **kwargs):  # noqa: ANN002, ANN003 - see dist_train.bundle.export
    """Write a model bundle (and its torch-only .pt2) from a checkpoint: see `dist_train.bundle.export`."""
    from dist_train.bundle import export as _export

    return _export(*args, **kwargs)


def load_model(*args, **kwargs):  # noqa: ANN002, ANN003 - see dist_train.bundle.load_model
    """A trained model taking raw inputs, from a bundle or a run: see `dist_train.bundle.load_model`."""
    from dist_train.bundle import load_model as _load_model

    return _load_model(*args, **kwargs)


def predict(*args, **kwargs):  # noqa: ANN002, ANN003 - see dist_train.inference.predict
    """Predictions for new inputs: see `dist_train.inference.predict`."""
    from dist_train.inference import predict as _predict

    return _predict(*args, **kwargs)


def evaluate(*args, **kwargs):  # noqa: ANN002, ANN003 - see dist_train.inference.evaluate
    """Metrics of a trained model on a split or new data: see `dist_train.inference.evaluate`."""
    from dist_train.inference import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


__all__ = ["ConfigError", "DistTrainError", "evaluate", "export", "fit", "load_model", "predict"]
__version__ = "0.1.0"
