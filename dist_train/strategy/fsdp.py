"""torch's fully sharded data parallel (FSDP2, `fully_shard`): each rank holds
1/N of every parameter, its gradient and its optimizer state; a unit's
parameters are gathered for its forward (and again for its backward, with
`strategy.reshard_after_forward`) and its gradients reduce-scattered.

Units: each layer of the built-in networks (their Linear and Conv2d), or the
module classes named in `strategy.fsdp_modules`, or else each child module
of your network that has parameters; the root last. Gradients average over
ranks like DDP's, so the loss scaling of the base class gives the gradient of
the global mean; on all micro-batches but the last the reduction is skipped
(`set_requires_gradient_sync`). The gradient norm is over all shards.
`train.precision=bf16` computes in bfloat16 (parameters cast for each unit's
forward) and reduces in float32.

Checkpoints: the model and optimizer state go through torch.distributed.
checkpoint (DCP) into `dcp/` inside our checkpoint directory, each rank
writing its shards, each file listed in the manifest with its SHA-256; a
checkpoint saved by N ranks loads on M (DCP reshards). `model.pt` holds the
whole model, gathered, for export. DCP's metadata file is a pickle: it is
read with an unpickler that admits only DCP's own record types, never
arbitrary objects."""

from __future__ import annotations

import contextlib
import copy
import io
import math
import pickle
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from dist_train.config import Config
from dist_train.env import DistEnv
from dist_train.errors import ConfigError, DistTrainError
from dist_train.strategy.base import StepResult, Strategy
from dist_train.strategy.precision import Precision

DCP_DIR = "dcp"
#: what the built-in networks are sharded by: each of their layers
BUILT_IN_UNITS = (nn.Linear, nn.Conv2d)


def units(model: nn.Module, class_names: tuple[str, ...], built_in: bool) -> list[nn.Module]:
    """The modules fully_shard makes units of (the root excluded), innermost first."""
    if class_names:
        found = [m for m in model.modules() if m is not model and type(m).__name__ in class_names]
        named = {type(m).__name__ for m in found}
        missing = [c for c in class_names if c not in named]
        if missing:
            present = sorted({type(m).__name__ for m in model.modules() if any(True for _ in m.parameters())})
            raise ConfigError("strategy.fsdp_modules", f"{', '.join(repr(m) for m in missing)} "
                              f"{'is' if len(missing) == 1 else 'are'} not a module class of the model",
                              f"its module classes with parameters are: {', '.join(present)}")
        return found
    if built_in:
        return [m for m in model.modules() if isinstance(m, BUILT_IN_UNITS)]
    return [m for m in model.children() if any(True for _ in m.parameters())]


class FSDPStrategy(Strategy):
    """Needs a process group (the job's, or a group of one that `dist_train.run` starts)."""

    writes_files = True
    sharded_forward = True  # every rank must run every forward (evaluation included)

    def __init__(self, cfg: Config, env: DistEnv, model: nn.Module,
                 make_optimizer: Callable[[nn.Module], torch.optim.Optimizer], precision: Precision) -> None:
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

        st = cfg.strategy
        if st.offload_params == "cpu" and not env.device.startswith("cuda"):
            raise ConfigError("strategy.offload_params", "cpu offload with fsdp needs a GPU (on a CPU the parameters "
                              "are in host memory already)", "drop strategy.offload_params, or run on GPUs")
        mixed = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
                 if precision.name == "bf16" else MixedPrecisionPolicy())
        offload = CPUOffloadPolicy() if st.offload_params == "cpu" else OffloadPolicy()
        options = {"reshard_after_forward": st.reshard_after_forward, "mp_policy": mixed, "offload_policy": offload}
        # the network's shape without its memory: what `plain_model` fills with the gathered weights
        self._template = copy.deepcopy(model).to("meta")
        for unit in units(model, tuple(st.fsdp_modules), built_in=not cfg.model.class_path):
            fully_shard(unit, **options)
        fully_shard(model, **options)
        self.model = self.train_model = model
        self.optimizer = make_optimizer(model)
        # bf16 is FSDP's mixed precision policy: no autocast around it
        self.precision = Precision("fp32", env.device) if precision.name == "bf16" else precision
        self.env, self.world_size = env, env.world_size

    # ------------------------------------------------------------ training

    def _accumulating(self, last: bool) -> contextlib.AbstractContextManager:
        self.model.set_requires_gradient_sync(last)  # reduce-scatter on the last micro-batch only
        return contextlib.nullcontext()

    def step(self, grad_clip_norm: float | None) -> StepResult:
        """The global norm over every rank's shards (torch's clip_grad_norm_
        all-reduces it), clipping, then the step if it is finite."""
        self.precision.unscale(self.optimizer)
        if not hasattr(self, "_params"):
            self._params = [p for p in self.model.parameters() if p.requires_grad]
        grads = [p.grad for p in self._params if p.grad is not None]
        if grad_clip_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(self._params, grad_clip_norm)
        elif grads:
            norm = torch.nn.utils.get_total_norm(grads)
        else:
            norm = torch.zeros(())
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        applied = math.isfinite(norm.item())
        self._optimizer_step() if applied else self._skip_step()
        scaled = self.precision.scaler is not None
        return StepResult(norm, applied, overflow=scaled and not applied, loss_scale=self.precision.loss_scale)

    # ------------------------------------------------------------ state

    def model_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole model (a collective: every rank's shards gathered; complete on rank 0)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_model_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """The model comes back from DCP's shards (load_files); model.pt is for export."""

    def plain_model(self) -> nn.Module:
        """The whole network in one plain module on every rank (a collective),
        for use outside training: a sharded module's forward is a collective of
        all ranks, which one rank calling it alone would wait in for ever."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True))
        device = next((t.device for t in full.values()), torch.device("cpu"))
        plain = copy.deepcopy(self._template).to_empty(device=device)
        buffers = dict(self.model.named_buffers())  # not sharded: the non-persistent ones are here only
        for name, buffer in plain.named_buffers():
            if name in buffers:
                buffer.copy_(buffers[name])
        plain.load_state_dict(full)
        return plain.eval()

    def state_dict(self) -> dict[str, Any]:
        return {"fsdp": DCP_DIR, **self.precision.state_dict()}  # the optimizer's shards are in dcp/

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("fsdp") != DCP_DIR:
            raise DistTrainError("this checkpoint was written by another strategy (ddp or deepspeed); resume it with "
                                 "that strategy, or start afresh with --fresh")
        self.precision.load_state_dict(state)

    def save_files(self, writer: Any) -> None:
        """Collective: each rank writes its shards of the model and the optimizer
        state with DCP; every file is listed with its digest. With several
        workers the shards are copied at once (the only pause) and written in the
        background over the checkpoint writer's own group (DCP's async save);
        the checkpoint's thread waits for them before its manifest."""
        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        directory = Path(writer.directory) / DCP_DIR
        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        state = {"model": model_state, "optim": optim_state}
        rank = dist.get_rank()

        def record() -> None:  # each rank its own shard files; rank 0 also the metadata DCP writes last
            for path in sorted(directory.iterdir()):
                if path.name.startswith(f"__{rank}_") or (rank == 0 and not path.name.startswith("__")):
                    writer.record(path)

        if writer.group is None:
            dcp.save(state, checkpoint_id=str(directory))
            record()
            return
        future = dcp.async_save(state, checkpoint_id=str(directory), process_group=writer.group)
        writer.finishing.append(lambda: (future.result(), record()))

    def load_files(self, directory: Path) -> None:
        """The model's and the optimizer's shards, resharded to this job's ranks."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        state = {"model": model_state, "optim": optim_state}
        dcp.load(state, checkpoint_id=str(Path(directory) / DCP_DIR), storage_reader=safe_reader(directory))
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


# ------------------------------------------------------------ reading DCP's metadata without unpickling objects

#: what DCP's .metadata pickle holds; nothing else may be built while reading it
_ALLOWED = {("torch.distributed.checkpoint.metadata", n) for n in (
    "Metadata", "ChunkStorageMetadata", "TensorStorageMetadata", "BytesStorageMetadata", "TensorProperties",
    "StorageMeta", "MetadataIndex", "_MEM_FORMAT_ENCODING")} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
    ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),
    ("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset")}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.memory_format,
                                                                          torch.layout)):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint's metadata")


def safe_reader(directory: Path) -> Any:
    """DCP's file reader, its metadata read with `_MetadataUnpickler`."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            path = self._get_metadata_path(kwargs.get("rank"))
            with self.fs.create_stream(path, "rb") as stream:
                try:
                    metadata = _MetadataUnpickler(io.BytesIO(stream.read())).load()
                except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
                    raise DistTrainError(f"checkpoint {directory}: {Path(path).name} is not DCP metadata ({exc}); "
                                         "it was not written by dist-train") from None
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(str(Path(directory) / DCP_DIR))
