"""Training from a script with the Python API instead of a config file:

    python examples/python_api/train.py                                  # one process
    dist-train launch --nproc-per-node 2 examples/python_api/train.py    # two workers, same result

dist_train.fit runs the same trainer as `dist-train run`: the model and the
datasets come from here, everything else (batch, optimizer, schedule,
checkpoints, resume, W&B) from the config mapping and overrides. Run it again
and it resumes (or says the run has finished)."""

import sys
from pathlib import Path

import torch
from torch import nn

import dist_train

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "custom_dataset"))
from spirals import make_splits  # noqa: E402  (the example dataset next door)


def make_model(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A function rather than a module: every worker builds the same initial weights."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(input_shape[0], 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(),
                         nn.Linear(64, num_classes))


config = {
    "optim": {"name": "adam", "lr": 0.01},
    "train": {"epochs": 15, "global_batch_size": 128},
    "data": {"loader_workers": 0, "normalize": "per_feature"},
    "dist": {"device": "cpu"},
    "run": {"dir": "runs/examples/python_api"},
}

if __name__ == "__main__":
    result = dist_train.fit(config, *sys.argv[1:], model=make_model, data=make_splits(samples=3000))
    if result is not None and int(__import__("os").environ.get("RANK", "0")) == 0:
        print(f"test accuracy {result.test['accuracy']:.3f} after {result.steps} steps")
