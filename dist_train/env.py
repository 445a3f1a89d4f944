"""`DistEnv`: who this process is in the job, read once from torch's environment.

Only torch's variables are read (RANK, LOCAL_RANK, WORLD_SIZE, ...). Translating
SLURM or any other scheduler into them is the launcher's job, never the library's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from dist_train.errors import DistTrainError


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    node_rank: int = 0
    device: str = "cpu"
    backend: str = "gloo"
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    # torchrun: whether its agent hosts the store the workers meet in
    agent_store: bool = False

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, device: str = "auto") -> "DistEnv":
        """Build from torch's launcher variables; a plain `python` process is rank 0 of 1.

        device: "auto" (the GPU of this local rank when CUDA is available, else CPU),
        "cpu" or "cuda".
        """
        environ = os.environ if environ is None else environ
        rank = _int_var(environ, "RANK", 0)
        world_size = _int_var(environ, "WORLD_SIZE", 1)
        local_rank = _int_var(environ, "LOCAL_RANK", 0)
        local_world_size = _int_var(environ, "LOCAL_WORLD_SIZE", 1)
        node_rank = _int_var(environ, "GROUP_RANK", rank // max(local_world_size, 1))
        common = {"master_addr": environ.get("MASTER_ADDR", "127.0.0.1"), "master_port": _int_var(environ, "MASTER_PORT", 29500),
                  "agent_store": environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"}
        if not 0 <= rank < world_size:
            raise DistTrainError(
                f"RANK={rank} is outside WORLD_SIZE={world_size}; the launcher set an "
                "inconsistent environment (start workers with `dist-train launch` or torchrun)"
            )
        use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if use_cuda:
            if not torch.cuda.is_available():
                raise DistTrainError("dist.device is 'cuda' but torch sees no CUDA device; use dist.device=cpu")
            index = cuda_device_index(local_rank, torch.cuda.device_count(), environ.get("CUDA_VISIBLE_DEVICES"))
            return cls(rank, local_rank, world_size, local_world_size, node_rank, f"cuda:{index}", "nccl", **common)
        return cls(rank, local_rank, world_size, local_world_size, node_rank, "cpu", "gloo", **common)


def cuda_device_index(local_rank: int, count: int, visible: str | None) -> int:
    """The GPU this worker drives: the one of its local rank, or the only one it
    sees when the scheduler gave each task its own (SLURM --gpus-per-task, or
    --gpu-bind=single: CUDA_VISIBLE_DEVICES names one device)."""
    if local_rank < count:
        return local_rank
    if count == 1 and visible is not None and len([d for d in visible.split(",") if d.strip()]) == 1:
        return 0
    raise DistTrainError(
        f"LOCAL_RANK={local_rank} but this node has only {count} GPU(s) visible to the worker: start at most "
        f"{count} workers per node (--nproc-per-node / --ntasks-per-node)")


def _int_var(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise DistTrainError(f"environment variable {name}={raw!r} is not an integer") from None
