"""DeepSpeed: ZeRO stages 0-3 behind the same strategy interface.

Our config stays the single source of truth: the DeepSpeed config is derived
from it (micro batch, accumulation, clipping, precision, ZeRO stage, offload)
and `strategy.deepspeed_config` may add anything else, but never a key we
derive (that would set a value twice). The optimizer is ours (a torch
optimizer from `optim`), so no DeepSpeed op is compiled at start-up, unless the
raw section names an `optimizer`, which then replaces it (and is announced).

Accumulation is ours too: the trainer marks the last micro-batch of a step
(`set_gradient_accumulation_boundary`) and calls `engine.step()` once per
optimizer step. Gradients average over ranks like DDP's, so the loss gets the
same world_size / global_count scale.

Checkpoints: DeepSpeed's own save/load, into `deepspeed/` inside our
checkpoint directory, through a checkpoint engine of ours that writes each
file atomically with its SHA-256 (for our manifest) and loads with
`weights_only=True` (allowing only the few DeepSpeed classes its files hold).
`model.pt` next to them holds the consolidated weights, loadable with torch.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dist_train.config import Config
from dist_train.env import DistEnv
from dist_train.errors import ConfigError, DistTrainError
from dist_train.resolve import Resolved
from dist_train.strategy.base import StepResult, Strategy
from dist_train.strategy.precision import Precision

INSTALL_HINT = "pip install 'dist-train[deepspeed]' (or: pip install deepspeed)"
TAG = "deepspeed"  # the subdirectory of a checkpoint that DeepSpeed's files go to
def import_deepspeed(device: str = "cpu") -> Any:
    """DeepSpeed, on the accelerator of `device`. It picks CUDA wherever a GPU is
    visible and would put each rank of a CPU job on the GPU of its local rank;
    the CPU accelerator is set after the import (the launcher also sets
    DS_ACCELERATOR=cpu for such a job). It reads LOCAL_RANK from the
    environment, which launchers set (`dist-train run` too, for one process)."""
    try:
        import deepspeed
    except ImportError as exc:
        raise DistTrainError(f"strategy.name=deepspeed needs DeepSpeed, which is not installed ({exc}); "
                             f"install it with: {INSTALL_HINT}") from None
    # On CPU, DeepSpeed's comm backend JIT-compiles a shared-memory all-reduce op
    # at start-up (a minute, and a C++ toolchain). Only its inference all-reduce
    # uses it; training's collectives are torch.distributed's, so skip the build.
    # (by sys.modules: the attribute deepspeed.comm.torch is the torch package itself)
    import importlib

    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    from deepspeed.accelerator import get_accelerator, set_accelerator

    if device == "cpu" and get_accelerator().device_name() != "cpu":  # imported before, for a GPU job
        from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator

        set_accelerator(CPU_Accelerator())
    # DeepSpeed reports every save, load and bucket at INFO; our records say what matters
    deepspeed.utils.logger.setLevel(logging.WARNING)
    # its collectives use names torch 2.13 deprecates: one warning per call otherwise
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed.c10d_logger")
    return deepspeed


def deepspeed_config(cfg: Config, resolved: Resolved) -> dict[str, Any]:
    """The DeepSpeed config derived from ours, plus the raw section."""
    s, t = cfg.strategy, cfg.train
    zero: dict[str, Any] = {"stage": s.zero_stage}
    if s.offload_optimizer != "none":
        zero["offload_optimizer"] = {"device": s.offload_optimizer}
    if s.offload_params != "none":
        zero["offload_param"] = {"device": s.offload_params}
    ds: dict[str, Any] = {
        "train_batch_size": resolved.global_batch_size,
        "train_micro_batch_size_per_gpu": resolved.micro_batch_size,
        "gradient_accumulation_steps": resolved.grad_accum_steps,
        # stage 0 clips in our code (like DDP); the ZeRO optimizers clip their partitions
        "gradient_clipping": float(t.grad_clip_norm or 0.0) if s.zero_stage > 0 else 0.0,
        "zero_optimization": zero,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if t.precision == "fp16":  # DeepSpeed's fp16: fp16 weights, fp32 masters, a dynamic loss scaler
        ds["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
        # DeepSpeed >= 0.19 casts only the parameters: batch norm would then hold
        # fp16 weights with fp32 running statistics, which its backward refuses
        ds["data_types"] = {"buffer_dtype": "fp16"}
    # bf16 is torch autocast around the forward (fp32 weights), as under DDP
    raw = copy.deepcopy(dict(s.deepspeed_config))  # keys we derive were refused when the config was loaded
    zero.update(raw.pop("zero_optimization", {}))
    ds.update(raw)
    return ds


class _CastInputs(nn.Module):
    """Evaluation of an fp16 module with float32 inputs and outputs."""

    def __init__(self, module: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.module, self.dtype = module, dtype

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.module(inputs.to(self.dtype)).float()


def _checkpoint_engine_class() -> type:
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class SafeCheckpointEngine(TorchCheckpointEngine):
        """Writes through the checkpointer's writer (atomic, with digests for our
        manifest); loads never unpickle code."""

        def __init__(self, config_params: Any = None) -> None:
            super().__init__(config_params)
            self.writer: Any = None  # set for the duration of a save

        def save(self, state_dict: Any, path: str) -> None:
            self.writer.save(state_dict, Path(path))

        def load(self, path: str, map_location: Any = None) -> Any:
            with torch.serialization.safe_globals(_deepspeed_safe_globals()):
                return torch.load(path, map_location=map_location, weights_only=True)

    return SafeCheckpointEngine


def _deepspeed_safe_globals() -> list:
    """The plain-data classes DeepSpeed's checkpoint files hold."""
    import argparse
    import collections

    found: list = [argparse.Namespace, collections.OrderedDict]
    for module, names in (("deepspeed.runtime.fp16.loss_scaler", ("LossScaler", "DynamicLossScaler")),
                          ("deepspeed.runtime.zero.config", ("ZeroStageEnum",)),
                          ("deepspeed.utils.tensor_fragment", ("fragment_address",))):
        try:
            mod = __import__(module, fromlist=list(names))
        except ImportError:
            continue
        found += [getattr(mod, n) for n in names if hasattr(mod, n)]
    return found


class DeepSpeedStrategy(Strategy):
    """Needs a process group (the job's, or a group of one that `dist_train.run` starts)."""

    writes_files = True

    def __init__(self, cfg: Config, env: DistEnv, resolved: Resolved, model: nn.Module,
                 optimizer: torch.optim.Optimizer, precision: Precision) -> None:
        # DeepSpeed's own fp16 (fp16 weights, fp32 masters, its loss scaler) replaces
        # autocast and torch's scaler; bf16 is autocast around the forward, as under DDP
        self.ds_fp16 = cfg.train.precision == "fp16"
        if self.ds_fp16 and not env.device.startswith("cuda"):
            raise ConfigError("train.precision", "fp16 under DeepSpeed needs a GPU",
                              "use train.precision=bf16 on CPU, or strategy.name=ddp for fp16 autocast")
        if "LOCAL_RANK" not in os.environ:  # DeepSpeed reads it itself and would fail with an assertion
            raise DistTrainError("DeepSpeed reads LOCAL_RANK from the environment, which is not set: start the job "
                                 "with `dist-train run`/`launch`, torchrun or srun, or set LOCAL_RANK=0 for one process")
        deepspeed = import_deepspeed(env.device)
        self.env, self.stage = env, cfg.strategy.zero_stage
        self.precision = Precision("fp32", env.device) if self.ds_fp16 else precision
        ds_config = deepspeed_config(cfg, resolved)
        # our process group is up: DeepSpeed's comm wraps it
        deepspeed.init_distributed(dist_backend=torch.distributed.get_backend(), auto_mpi_discovery=False,
                                   dist_init_required=False)
        own_optimizer = "optimizer" in ds_config
        if own_optimizer and env.is_rank0:
            print(f"dist-train: using DeepSpeed's optimizer {ds_config['optimizer'].get('type')!r} from "
                  "strategy.deepspeed_config.optimizer instead of optim.name (its op may be compiled at start-up)",
                  flush=True)
        engine, ds_optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=None if own_optimizer else optimizer, config=ds_config,
            model_parameters=[p for p in model.parameters() if p.requires_grad] if own_optimizer else None,
            dist_init_required=False)
        engine.checkpoint_engine = _checkpoint_engine_class()(engine._config)
        self.engine, self.train_model, self.model, self.optimizer = engine, engine, engine.module, ds_optimizer
        self.world_size = env.world_size
        self._deepspeed = deepspeed

    @property
    def eval_model(self) -> nn.Module:
        return _CastInputs(self.model, torch.float16) if self.ds_fp16 else self.model

    def _forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return super()._forward(inputs.half() if self.ds_fp16 else inputs)

    def _accumulating(self, last: bool) -> contextlib.AbstractContextManager:
        self.engine.set_gradient_accumulation_boundary(last)
        return contextlib.nullcontext()

    def _backward(self, loss: torch.Tensor) -> None:
        # DeepSpeed averages over ranks like DDP; accumulation scaling is ours
        self.engine.backward(loss, scale_wrt_gas=False)

    def step(self, grad_clip_norm: float | None) -> StepResult:
        if self.stage == 0 and not self.ds_fp16:
            return super().step(grad_clip_norm)  # plain gradients: our norm, clip and guard
        # ZeRO: the optimizer computes the norm over its partitions, clips, and
        # skips the step when the norm is not finite (an fp16 overflow included)
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        norm = torch.tensor(float("nan") if norm is None else float(norm))
        applied = bool(self.engine.was_step_applied())
        scale = float(self.optimizer.cur_scale) if self.ds_fp16 else None
        return StepResult(norm, applied, overflow=self.ds_fp16 and not applied, loss_scale=scale)

    def _optimizer_step(self) -> None:
        self.engine.step()
        self.engine.zero_grad()

    def _skip_step(self) -> None:
        self.engine.zero_grad()

    # ------------------------------------------------------------ state

    def _gathered(self, modifier_rank: int | None):
        if self.stage < 3:
            return contextlib.nullcontext()
        return self._deepspeed.zero.GatheredParameters(list(self.model.parameters()), modifier_rank=modifier_rank)

    def model_state_dict(self) -> dict[str, torch.Tensor]:
        if self.stage < 3:  # every rank holds the whole model (the checkpoint's snapshot copies it)
            return self.model.state_dict()
        with self._gathered(None):  # copies: the gathered weights are released on leaving
            return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def load_model_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        with self._gathered(0):
            if self.stage < 3 or self.env.is_rank0:
                self.model.load_state_dict(state)

    def state_dict(self) -> dict[str, Any]:
        # the optimizer's partitions are in DeepSpeed's own files
        return {"deepspeed": TAG, "zero_stage": self.stage}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("deepspeed") != TAG:
            raise DistTrainError("this checkpoint was not written by the deepspeed strategy; resume it with the "
                                 "strategy that wrote it, or start afresh with --fresh")
        saved_stage = int(state.get("zero_stage", -1))
        if saved_stage != self.stage:
            raise DistTrainError(f"this checkpoint holds ZeRO stage {saved_stage} state but strategy.zero_stage is "
                                 f"{self.stage}; resume with strategy.zero_stage={saved_stage}")

    def save_files(self, writer: Any) -> None:
        self.engine.checkpoint_engine.writer = writer
        try:
            self.engine.save_checkpoint(str(writer.directory), tag=TAG, client_state={}, save_latest=False)
        finally:
            self.engine.checkpoint_engine.writer = None
        script = writer.directory / TAG / "zero_to_fp32.py"  # DeepSpeed's recovery script: not ours to vouch for
        if self.env.is_rank0 and script.exists():
            script.unlink()

    def load_files(self, directory: Path) -> None:
        shards = sorted((directory / TAG).glob("*optim_states.pt"))
        if self.stage > 0 and len(shards) != self.world_size:
            raise DistTrainError(f"checkpoint {directory} holds optimizer state sharded over {len(shards)} workers; "
                                 f"resume it with {len(shards)} workers (this job has {self.world_size})")
        loaded, _ = self.engine.load_checkpoint(str(directory), tag=TAG, load_optimizer_states=True,
                                                load_lr_scheduler_states=False)
        if loaded is None:
            raise DistTrainError(f"DeepSpeed could not load its files in {directory / TAG}")
