"""`train.precision` as one object: how the forward pass is cast and how the
loss is scaled.

- fp32: nothing.
- bf16: `torch.autocast` to bfloat16 around the forward pass; weights and the
  optimizer stay in float32; bfloat16's range needs no loss scaling.
- fp16: autocast to float16 and torch's dynamic loss scaler (`GradScaler`): a
  step whose gradients overflow is skipped and the scale lowered. Its state
  is checkpointed, so a resume is exact.
DeepSpeed's own fp16 (fp16 weights, fp32 masters, its own scaler) lives in
the DeepSpeed strategy; under it this object is fp32 or bf16.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    def __init__(self, name: str, device: str) -> None:
        self.name = name
        self.device_type = torch.device(device).type
        self.scaler = torch.amp.GradScaler(self.device_type) if name == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = AUTOCAST_DTYPES.get(self.name)
        return contextlib.nullcontext() if dtype is None else torch.autocast(self.device_type, dtype=dtype)

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """The gradients in their true units, before the norm and clipping."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def skip(self) -> None:
        """A step dropped for non-finite gradients: an fp16 overflow lowers the scale."""
        if self.scaler is not None:
            self.scaler.update()

    @property
    def loss_scale(self) -> float | None:
        return float(self.scaler.get_scale()) if self.scaler is not None else None

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict()} if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
