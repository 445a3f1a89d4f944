"""Data of your own for dist-train: map-style datasets made by a function.

data.class_path: spirals.py:make_splits returns the train, validation and
test datasets; each item is (input tensor, class index). dist-train shards the
indices over the workers (every sample once per epoch), fetches them in
data.loader_workers processes and normalizes the inputs with the training
split's statistics. `__getitems__` (optional) fetches a whole micro-batch in
one call, which is faster than item by item."""

import math

import torch
from torch.utils.data import Dataset


class Spirals(Dataset):
    """Points on `arms` interleaved spirals with noise; the class is the arm."""

    def __init__(self, samples: int, arms: int, noise: float, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.targets = torch.randint(0, arms, (samples,), generator=g)
        radius = torch.rand(samples, generator=g) * 4 + 0.2
        angle = radius * 1.6 + self.targets * (2 * math.pi / arms)
        points = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
        self.inputs = points + noise * torch.randn(samples, 2, generator=g)
        self.num_classes = arms

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[index], self.targets[index]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        idx = torch.tensor(indices)
        return list(zip(self.inputs[idx], self.targets[idx]))


def make_splits(samples: int = 6000, arms: int = 3, noise: float = 0.15) -> tuple[Dataset, Dataset, Dataset]:
    return (Spirals(samples, arms, noise, seed=0), Spirals(samples // 5, arms, noise, seed=1),
            Spirals(samples // 5, arms, noise, seed=2))
