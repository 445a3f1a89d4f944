"""Process group set-up and the few collectives the library uses.

Every function here is called on every rank (habit: collectives everywhere,
side effects on rank 0). With one worker no process group exists and each
function is the identity.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator

import torch
import torch.distributed as dist

from dist_train.env import DistEnv


@contextlib.contextmanager
def process_group(env: DistEnv, timeout_s: float) -> Iterator[None]:
    """Start the process group (when world_size > 1) with an explicit timeout,
    so a lost peer fails the job instead of hanging for torch's 30 minutes."""
    if not env.is_distributed or dist.is_initialized():
        yield
        return
    if env.device.startswith("cuda"):
        torch.cuda.set_device(env.device)
    kwargs: dict = {}
    if env.backend == "nccl":
        kwargs["device_id"] = torch.device(env.device)
    if env.agent_store:
        # Under torchrun the agent's store outlives a restart of the workers, with
        # the previous group's addresses still in it: the restarted workers would
        # try to connect to peers that are gone. A prefix per restart keeps them apart.
        store = dist.TCPStore(env.master_addr, env.master_port, env.world_size, is_master=False,
                              timeout=datetime.timedelta(seconds=timeout_s))
        kwargs["store"] = dist.PrefixStore(f"dist-train/restart-{env.restart_count}", store)
    dist.init_process_group(
        backend=env.backend,
        rank=env.rank,
        world_size=env.world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
        **kwargs,
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum `tensor` over ranks in place and return it."""
    if env.is_distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def agree_any(flag: bool, env: DistEnv) -> bool:
    """True on every rank when it is True on at least one: for decisions
    (stop, skip, save) that every rank must take together."""
    if not env.is_distributed:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier(env: DistEnv) -> None:
    if env.is_distributed:
        dist.barrier()
