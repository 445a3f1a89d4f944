"""How gradients get synchronized: the one interface the trainer talks to.

The trainer never branches on the strategy. Per optimizer step it runs, for
each micro-batch, the forward pass and `backward(loss)` inside
`micro_step(sync=is_last_micro_batch)`, then calls `step()`.
`backward(loss_sum, global_count)` gets this micro-batch's loss summed over its
samples and the number of samples in the whole step across all ranks; after
the step's last micro-batch the gradients on every rank must equal the
gradient of the global mean (all ranks' loss sums over `global_count`).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn


class Strategy(ABC):
    #: the module to call in training (may be a wrapper)
    train_model: nn.Module
    #: the plain module: evaluation, checkpoints, export
    model: nn.Module
    optimizer: torch.optim.Optimizer

    def micro_step(self, sync: bool) -> contextlib.AbstractContextManager:
        """Wraps one micro-batch's forward and backward; gradients are
        communicated only when `sync` (the last micro-batch of a step)."""
        return contextlib.nullcontext()

    @abstractmethod
    def backward(self, loss_sum: torch.Tensor, global_count: int) -> None:
        """Accumulate this micro-batch's share of the gradient of the global mean."""

    def step(self, grad_clip_norm: float | None) -> torch.Tensor | None:
        """Clip (when asked), apply the optimizer, zero the gradients.
        Returns the gradient norm before clipping, when clipping."""
        norm = None
        if grad_clip_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), grad_clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
