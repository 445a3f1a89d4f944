"""One process, no communication: the base behaviour of every strategy."""

from __future__ import annotations

import torch
from torch import nn

from dist_train.strategy.base import Strategy
from dist_train.strategy.precision import Precision


class SingleStrategy(Strategy):
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, precision: Precision) -> None:
        self.model = self.train_model = model
        self.optimizer, self.precision = optimizer, precision
