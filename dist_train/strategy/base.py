"""How gradients get synchronized: the one interface the trainer talks to.

Per optimizer step the trainer calls `micro_batch(...)` once for each of this
rank's micro-batches (`last=True` for the final one, the only one whose
backward pass communicates), then `step(grad_clip_norm)`, which computes the
global gradient norm and updates the weights only when it is finite. Each
micro-batch's loss is the sum over its samples, scaled by 1/(samples in the
whole step across all ranks): after the last micro-batch every rank holds the
gradient of the global mean, exact when ranks or micro-batches differ in size.

A strategy's state is its model's weights (`model_state_dict`, complete on
rank 0), its optimizer and precision state (`state_dict`), and, for a
strategy that shards its state (DeepSpeed), files it writes itself into the
checkpoint directory through the writer the checkpointer hands it.
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from dist_train.errors import DistTrainError
from dist_train.strategy.precision import Precision


def _total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    # one fused kernel for the per-tensor norms (cheaper than get_total_norm's checks)
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


@dataclass
class StepResult:
    norm: torch.Tensor  # the global gradient norm before clipping (the same on every rank)
    applied: bool  # False: the weights were left as they were (a non-finite gradient)
    overflow: bool = False  # not applied because dynamic fp16 loss scaling overflowed (normal now and then)
    loss_scale: float | None = None


class Strategy(ABC):
    #: the plain module: evaluation, checkpoints, export
    model: nn.Module
    #: the module training calls (may be a wrapper)
    train_model: nn.Module
    optimizer: torch.optim.Optimizer
    precision: Precision
    world_size: int = 1
    #: whether checkpoints need `save_files` (a collective, on the training thread)
    writes_files: bool = False
    #: whether the model's forward is a collective (a sharded model gathers its
    #: parameters): then every rank runs as many forward passes as the others
    sharded_forward: bool = False

    # ------------------------------------------------------------ training

    def micro_batch(self, inputs: torch.Tensor, targets: torch.Tensor, loss_fn: Callable[..., torch.Tensor],
                    global_count: int, last: bool) -> torch.Tensor:
        """Forward and backward of one micro-batch; gradients are communicated
        only when `last`. Returns the micro-batch's mean loss (detached; 0 for
        an empty micro-batch)."""
        count = len(targets)
        with self._accumulating(last):
            outputs = self._forward(inputs)
            if count * self.world_size == global_count:
                # the usual micro-batch, exactly 1/world_size of its step: the
                # loss to differentiate is its mean (no scaling op in the graph)
                loss = loss_fn(outputs, targets, reduction="mean")
                self._backward(loss)
                return loss.detach()
            loss_sum = loss_fn(outputs, targets)
            self._backward(loss_sum * (self.world_size / global_count))
        return loss_sum.detach() / max(count, 1)

    def _forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.precision.name == "fp32":
            return self.train_model(inputs)
        with self.precision.autocast():
            return self.train_model(inputs).float()  # float32 outputs for the loss

    def _accumulating(self, last: bool) -> contextlib.AbstractContextManager:
        """Wraps a micro-batch's forward and backward: no communication unless `last`."""
        return contextlib.nullcontext()

    def _backward(self, loss: torch.Tensor) -> None:
        (loss if self.precision.scaler is None else self.precision.scale(loss)).backward()

    def step(self, grad_clip_norm: float | None) -> StepResult:
        """The global gradient norm (clipped to `grad_clip_norm` when given),
        then the optimizer step if it is finite, else no change."""
        self.precision.unscale(self.optimizer)
        if not hasattr(self, "_params"):  # walking the modules every step costs more than the norm
            self._params = [p for p in self.model.parameters() if p.requires_grad]
        grads = [p.grad for p in self._params if p.grad is not None]
        if grad_clip_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(self._params, grad_clip_norm)
        else:
            norm = _total_norm(grads) if grads else torch.zeros(())
        applied = math.isfinite(norm.item())  # one host read (bool(isfinite) costs a kernel more)
        self._optimizer_step() if applied else self._skip_step()
        scaled = self.precision.scaler is not None
        return StepResult(norm, applied, overflow=scaled and not applied, loss_scale=self.precision.loss_scale)

    def _optimizer_step(self) -> None:
        self.precision.step(self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)

    def _skip_step(self) -> None:
        """Drop this step's gradients; the weights stay as they were."""
        self.precision.skip()
        self.optimizer.zero_grad(set_to_none=True)

    def share_buffers(self) -> None:
        """Collective, before an evaluation: every rank takes rank 0's buffers
        (plain batch norm's running statistics), the ones a checkpoint saves,
        so the metrics are those of the saved model and the same on every rank.
        Each rank's plain batch norm updates its own statistics in a training
        forward, and DDP copies rank 0's to every rank before the next one, so
        no training step changes. Synchronized batch norm keeps them identical
        already."""
        if self.world_size <= 1:
            return
        if not hasattr(self, "_own_buffers"):
            from dist_train.sync_batchnorm import SyncBatchNorm

            synced = {id(b) for m in self.model.modules() if isinstance(m, (SyncBatchNorm, nn.SyncBatchNorm))
                      for b in m.buffers(recurse=False)}
            self._own_buffers = [b for b in self.model.buffers() if id(b) not in synced]
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for b in self._own_buffers:
            by_dtype.setdefault(b.dtype, []).append(b)
        import torch.distributed as dist

        for group in by_dtype.values():  # one broadcast per dtype
            flat = torch.cat([b.reshape(-1) for b in group])
            dist.broadcast(flat, src=0)
            for b, part in zip(group, flat.split([b.numel() for b in group])):
                b.copy_(part.view_as(b))

    @property
    def eval_model(self) -> nn.Module:
        """The module evaluation calls (float32 inputs; no communication unless
        `sharded_forward`)."""
        return self.model

    def plain_model(self) -> nn.Module:
        """The whole network as one module any rank may call alone (a collective
        for a strategy that shards parameters): what a finished run hands back."""
        return self.model

    # ------------------------------------------------------------ state

    def model_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole model's weights (a collective for strategies that shard
        parameters; complete on rank 0)."""
        return self.model.state_dict()

    def load_model_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's and the precision's state (rank 0 saves it)."""
        return {"optimizer": self.optimizer.state_dict(), **self.precision.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "optimizer" not in state:
            raise DistTrainError("this checkpoint was written by another strategy (deepspeed?); resume it with that "
                                 "strategy, or start afresh with --fresh")
        self.optimizer.load_state_dict(state["optimizer"])
        self.precision.load_state_dict(state)

    def save_files(self, writer: Any) -> None:
        """Collective, on the training thread: files this strategy writes itself
        into the checkpoint directory (`writer.directory`), each through
        `writer.save(obj, path)` so it is atomic and listed in the manifest."""

    def load_files(self, directory: Path) -> None:
        """Read back what `save_files` wrote (after `load_state_dict`)."""


class StrategyWeights:
    """The model's weights as a checkpoint part (model.pt)."""

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.strategy.model_state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.strategy.load_model_state_dict(state)

