"""How gradients get synchronized: the one interface the trainer talks to.

The trainer never branches on the strategy. Per optimizer step it runs, for
each micro-batch, the forward pass and `backward(loss)` inside
`micro_step(sync=is_last_micro_batch)`, then `grad_norm()` and
`optimizer_step()` (or `skip_step()` when the gradients are not finite).
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


def _total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    # one fused kernel for the per-tensor norms (cheaper than get_total_norm's checks)
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


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

    def grad_norm(self, grad_clip_norm: float | None) -> torch.Tensor:
        """The global gradient norm (after synchronization, so the same on every
        rank), clipping to `grad_clip_norm` when given."""
        if not hasattr(self, "_params"):  # walking the modules every step costs more than the norm
            self._params = [p for p in self.model.parameters() if p.requires_grad]
        grads = [p.grad for p in self._params if p.grad is not None]
        if grad_clip_norm is not None:
            return torch.nn.utils.clip_grad_norm_(self._params, grad_clip_norm)
        if not grads:
            return torch.zeros(())
        return _total_norm(grads)

    def optimizer_step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def skip_step(self) -> None:
        """Drop this step's gradients without touching the weights."""
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
