"""`dist.check_collectives: true`: before every collective of the job's group
runs, the ranks compare what they are about to call, so ranks that diverged
(a collective under `if rank == 0`, an evaluation one rank skips, another
shape) are named at once with every rank's call site, instead of hanging
or, on gloo, aborting one rank with "Received data size doesn't match".

torch's own check (TORCH_DISTRIBUTED_DEBUG=DETAIL) does the same inside the
process group, but with DistributedDataParallel it crashes the process
(SIGSEGV in DDP's constructor, torch 2.13 on CPU), so this one is ours:

- the torch.distributed collectives called on the job's (default) group are
  wrapped while the job runs: yours, ours (the communicator, synchronized
  batch norm) and a library's;
- DDP's gradient all-reduce, which runs inside torch, is checked by a DDP
  communication hook (`ddp_hook`) before it reduces each bucket.

Each check all-gathers two numbers per rank (a count and a hash of the
operation and its shapes) on a gloo group of its own; only when they differ
are the descriptions and call sites gathered and `CollectiveMismatch`
raised on every rank. The cost is that small all-gather per collective
(measured in tests/benchmarks/RESULTS.md)."""

from __future__ import annotations

import functools
import threading
import zlib
from typing import Any

import torch

#: the first words of the error, recognized wherever it surfaces (DDP wraps a hook's error in its own)
MARK = "dist-train: the ranks diverged"
WRAPPED = ("all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce_scatter",
           "reduce_scatter_tensor", "reduce", "gather", "scatter", "all_to_all", "all_to_all_single", "barrier",
           "broadcast_object_list", "all_gather_object", "gather_object", "scatter_object_list")


class CollectiveMismatch(RuntimeError):
    pass


def _describe(op: str, args: tuple, kwargs: dict) -> str:
    shapes = []
    for value in [*args, *kwargs.values()]:
        if isinstance(value, torch.Tensor):
            shapes.append(f"{str(value.dtype).removeprefix('torch.')}{list(value.shape)}")
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, torch.Tensor) for v in value):
            shapes.append(f"{len(value)} x {str(value[0].dtype).removeprefix('torch.')}{list(value[0].shape)}")
    return f"{op}({', '.join(shapes)})" if shapes else op


def _call_site() -> str:
    """The innermost frame of the caller's code, else of ours (not torch's, not this file's)."""
    import sys

    from dist_train.frames import whose

    frame = sys._getframe(2)
    ours = None
    while frame is not None:
        code = frame.f_code
        kind = whose(code.co_filename)
        if kind == "yours":
            return f"at {code.co_filename}:{frame.f_lineno} in {code.co_name}"
        if kind == "ours" and ours is None and not code.co_filename.endswith(("collective_check.py", "comm.py")):
            ours = f"at {code.co_filename}:{frame.f_lineno} in {code.co_name}"
        frame = frame.f_back
    return ours or "at an unknown place"


class Checker:
    """Compares each rank's next collective with every other rank's."""

    def __init__(self, rank: int, world_size: int) -> None:
        import datetime

        import torch.distributed as dist

        self.dist, self.rank, self.world_size = dist, rank, world_size
        self.group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=600))
        self.count = 0
        self.local = threading.local()
        self.originals: dict[str, Any] = {}

    def check(self, op: str, args: tuple = (), kwargs: dict | None = None, site: str | None = None) -> None:
        if getattr(self.local, "busy", False):
            return  # a collective made of collectives (broadcast_object_list): checked once, as a whole
        self.local.busy = True
        try:
            self.count += 1
            description = _describe(op, args, kwargs or {})
            mine = torch.tensor([self.count, zlib.crc32(description.encode())], dtype=torch.int64)
            every = [torch.empty_like(mine) for _ in range(self.world_size)]
            self.originals.get("all_gather", self.dist.all_gather)(every, mine, group=self.group)
            if all(torch.equal(e, mine) for e in every):
                return
            found: list[Any] = [None] * self.world_size
            gather = self.originals.get("all_gather_object", self.dist.all_gather_object)
            gather(found, (self.count, description, site or _call_site()), group=self.group)
            parts = "; ".join(f"rank {r} calls {d} (its collective #{n}) {where}" for r, (n, d, where) in enumerate(found))
            raise CollectiveMismatch(f"{MARK}: {parts}")
        finally:
            self.local.busy = False

    def install(self) -> None:
        """Wrap torch.distributed's collectives: those on the job's group are checked first."""
        dist = self.dist
        for name in WRAPPED:
            original = getattr(dist, name, None)
            if original is None or name in self.originals:
                continue
            self.originals[name] = original
            setattr(dist, name, self._wrapped(name, original))

    def uninstall(self) -> None:
        for name, original in self.originals.items():
            setattr(self.dist, name, original)
        self.originals.clear()

    def _wrapped(self, name: str, original: Any) -> Any:
        checker = self

        @functools.wraps(original)
        def checked(*args: Any, **kwargs: Any) -> Any:
            group = kwargs.get("group")
            if group is None or group is checker.dist.group.WORLD:
                checker.check(f"torch.distributed.{name}", args, kwargs)
            return original(*args, **kwargs)

        return checked

    def ddp_hook(self) -> Any:
        """A DDP communication hook: each bucket is checked, then all-reduced
        as DDP's default hook does (divided by the world size, summed)."""
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        def hook(state, bucket):  # noqa: ANN001, ANN202 - torch checks the annotations it finds
            self.check("DDP's gradient all-reduce", (bucket.buffer(),), site="in the backward pass")
            return allreduce_hook(state, bucket)

        return hook


#: the job's checker while one is installed (dist.check_collectives)
CURRENT: Checker | None = None


def start(rank: int, world_size: int) -> Checker:
    global CURRENT
    CURRENT = Checker(rank, world_size)
    CURRENT.install()
    return CURRENT


def stop() -> None:
    global CURRENT
    if CURRENT is not None:
        CURRENT.uninstall()
        CURRENT = None
