"""How gradients get synchronized: the one interface the trainer talks to.

The trainer never branches on the strategy. Per optimizer step it runs, for
each micro-batch, `forward(inputs)` and `backward(loss)` inside
`micro_step(sync=is_last_micro_batch)`, then `apply_step(grad_clip_norm)`,
which computes the global gradient norm and updates the weights only when it
is finite. `backward(loss_sum, global_count)` gets this micro-batch's loss
summed over its samples and the number of samples in the whole step across all
ranks; after the step's last micro-batch the gradients on every rank must
equal the gradient of the global mean (all ranks' loss sums over
`global_count`).

Precision (`train.precision`) lives here too: `fp32`; `bf16` (autocast, fp32
weights); `fp16` (autocast with a dynamic loss scaler whose state is
checkpointed). Checkpoints go through `checkpoint_state` /
`save_own_files` / `restore`, so a strategy that shards its state (DeepSpeed)
writes its own files inside the checkpoint directory.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dist_train.errors import DistTrainError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    # one fused kernel for the per-tensor norms (cheaper than get_total_norm's checks)
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


@dataclass
class StepResult:
    norm: torch.Tensor  # the global gradient norm before clipping (the same on every rank)
    applied: bool  # False: the weights were left as they were (a non-finite gradient)


class Strategy(ABC):
    #: the module to call in training (may be a wrapper)
    train_model: nn.Module
    #: the plain module: evaluation, checkpoints, export
    model: nn.Module
    optimizer: torch.optim.Optimizer
    #: "fp32", "bf16" or "fp16"
    precision: str = "fp32"
    #: whether checkpoints need `save_own_files` (a collective on the training thread)
    writes_own_files: bool = False
    #: fp16's loss scaler (None otherwise)
    scaler: Any = None

    def setup_precision(self, precision: str, device: str) -> None:
        self.precision, self._device_type = precision, torch.device(device).type
        if precision == "fp16":
            self.scaler = torch.amp.GradScaler(self._device_type)

    @property
    def dynamic_loss_scaling(self) -> bool:
        """Whether a skipped step is the loss scaler's normal overflow handling."""
        return self.scaler is not None

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = AUTOCAST_DTYPES.get(self.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self._device_type, dtype=dtype)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Training forward under the precision policy; float32 outputs for the loss."""
        with self.autocast():
            return self.train_model(inputs).float()

    @property
    def eval_model(self) -> nn.Module:
        """The module evaluation calls (float32 inputs, no communication)."""
        return self.model

    def micro_step(self, sync: bool) -> contextlib.AbstractContextManager:
        """Wraps one micro-batch's forward and backward; gradients are
        communicated only when `sync` (the last micro-batch of a step)."""
        return contextlib.nullcontext()

    @abstractmethod
    def backward(self, loss_sum: torch.Tensor, global_count: int) -> None:
        """Accumulate this micro-batch's share of the gradient of the global mean."""

    def _backward_scaled(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def grad_norm(self, grad_clip_norm: float | None) -> torch.Tensor:
        """The global gradient norm (after synchronization, so the same on every
        rank), clipping to `grad_clip_norm` when given."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if not hasattr(self, "_params"):  # walking the modules every step costs more than the norm
            self._params = [p for p in self.model.parameters() if p.requires_grad]
        grads = [p.grad for p in self._params if p.grad is not None]
        if grad_clip_norm is not None:
            return torch.nn.utils.clip_grad_norm_(self._params, grad_clip_norm)
        if not grads:
            return torch.zeros(())
        return _total_norm(grads)

    def apply_step(self, grad_clip_norm: float | None) -> StepResult:
        """The norm, then the optimizer step if it is finite, else no change."""
        norm = self.grad_norm(grad_clip_norm)
        if bool(torch.isfinite(norm)):
            self.optimizer_step()
            return StepResult(norm, True)
        self.skip_step()
        return StepResult(norm, False)

    def optimizer_step(self) -> None:
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def skip_step(self) -> None:
        """Drop this step's gradients without touching the weights (an fp16
        overflow lowers the loss scale)."""
        if self.scaler is not None:
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    @property
    def loss_scale(self) -> float | None:
        return float(self.scaler.get_scale()) if self.scaler is not None else None

    # ------------------------------------------------------------ checkpoints

    def model_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole model's weights (a collective for strategies that shard
        parameters; complete on rank 0)."""
        return self.model.state_dict()

    def load_model_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)

    def checkpoint_state(self, is_rank0: bool) -> dict[str, Any]:
        """Collective. Rank 0: `model` (plain weights, model.pt) and `optimizer`
        (optimizer and loss-scaler state, kept in trainer.pt)."""
        model = self.model_state_dict()
        if not is_rank0:
            return {}
        optimizer: dict[str, Any] = {"optimizer": self.optimizer.state_dict()}
        if self.scaler is not None:
            optimizer["scaler"] = self.scaler.state_dict()
        return {"model": model, "optimizer": optimizer}

    def save_own_files(self, path: Path) -> dict[str, Any]:
        """Collective, on the training thread, before the rest of the checkpoint
        is written: files this strategy writes itself into the checkpoint
        directory `path`; returns name -> {bytes, sha256} for the manifest."""
        return {}

    def restore(self, path: Path, model_state: dict[str, torch.Tensor], optimizer_state: dict[str, Any]) -> None:
        self.load_model_state_dict(model_state)
        if "optimizer" not in optimizer_state:
            raise DistTrainError("this checkpoint was written by another strategy (deepspeed?); resume it with that "
                                 "strategy, or start afresh with --fresh")
        self.optimizer.load_state_dict(optimizer_state["optimizer"])
        if self.scaler is not None and "scaler" in optimizer_state:
            self.scaler.load_state_dict(optimizer_state["scaler"])
