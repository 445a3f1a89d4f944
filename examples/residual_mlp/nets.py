"""A network of your own for dist-train: a residual MLP with batch norm.

dist-train builds it from the config (model.class_path: nets.py:ResidualMLP),
passing model.init_args, and input_shape and num_classes because __init__
asks for them. Everything else applies unchanged: synchronized batch norm
(model.sync_batchnorm), DDP or DeepSpeed, checkpoints, exact resume, export."""

import math

import torch
from torch import nn


class ResidualBlock(nn.Module):
    """x + F(x), F = Linear -> BatchNorm -> ReLU -> Dropout -> Linear -> BatchNorm."""

    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(width, width, bias=False), nn.BatchNorm1d(width), nn.ReLU(),
                                  nn.Dropout(dropout), nn.Linear(width, width, bias=False), nn.BatchNorm1d(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


class ResidualMLP(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 256, blocks: int = 2,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.ReLU())
        self.blocks = nn.Sequential(*(ResidualBlock(width, dropout) for _ in range(blocks)))
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))
