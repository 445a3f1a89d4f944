"""One process, no communication."""

from __future__ import annotations

import torch
from torch import nn

from dist_train.strategy.base import Strategy


class SingleStrategy(Strategy):
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model = self.train_model = model
        self.optimizer = optimizer

    def backward(self, loss_sum: torch.Tensor, global_count: int) -> None:
        self._backward_scaled(loss_sum * (1.0 / global_count))
