"""The communicator: every collective the library uses, behind one small object.

`Comm.of(env)` gives the real one (torch.distributed over the job's process
group) when the job has several workers and a do-nothing one for a single
process. Tests build `FakeComm(rank, world_size, ...)` to drive one rank's
side of a decision without any process group.

Every method is a collective: all ranks call it, in the same order. The one
for side effects is `rank0_then_share(fn)`: rank 0 runs `fn` (make the run
directory, start the tracker, take a lock), and every rank gets its result, or
raises its error, at once. Without it, a failure on rank 0 before a barrier
leaves the other ranks waiting for `dist.timeout_s`, then reporting a lost
peer instead of rank 0's real message."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from dist_train.errors import DistTrainError

T = TypeVar("T")


class SharedError(DistTrainError):
    """Rank 0's error, raised on another rank by `rank0_then_share` (same text, same exit status)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _as_shared(exc: BaseException) -> tuple[str, int]:
    if isinstance(exc, DistTrainError):
        return str(exc), exc.exit_code
    return f"{type(exc).__name__}: {exc}", 1


class Comm:
    """One process: nothing to communicate."""

    rank = 0
    world_size = 1

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0

    @staticmethod
    def of(env: Any, group: Any = None) -> "Comm":
        """The communicator for `env` (a DistEnv): real when there are several workers."""
        return TorchComm(env, group) if env.world_size > 1 else Comm()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over ranks in place and return it."""
        return tensor

    def agree_any(self, flag: bool) -> bool:
        """True on every rank when it is True on at least one: for decisions
        (stop, skip, save) every rank must take together."""
        return bool(flag)

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (picklable plain data only)."""
        return obj

    def gather_object(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, ordered by rank, on every rank."""
        return [obj]

    def barrier(self) -> None:
        pass

    def side_group(self, timeout_s: float) -> "Comm":
        """A communicator over a gloo group of its own, for work beside training
        (background checkpoint saves) whose collectives must never interleave
        with the training's. Collective: every rank makes it at the same point."""
        return self

    def rank0_then_share(self, fn: Callable[[], T]) -> T:
        """Run `fn` on rank 0 only; every rank returns its result or raises its
        error (rank 0 the original, the others a SharedError with its text and
        exit status). The result must be plain picklable data."""
        outcome: tuple = ()
        error = None
        if self.is_rank0:
            try:
                outcome = ("ok", fn())
            except BaseException as exc:  # shared first, then raised on every rank
                error, outcome = exc, ("error", *_as_shared(exc))
        outcome = self.broadcast_object(outcome)
        if error is not None:
            raise error
        if outcome[0] == "error":
            raise SharedError(outcome[1], outcome[2])
        return outcome[1]

    def raise_together(self, error: BaseException | None) -> None:
        """Collective: when any rank met an error, every rank raises it (the
        lowest such rank's message and exit status), so none is left waiting
        in a collective its peers never reach."""
        everyone = self.gather_object(None if error is None else _as_shared(error))
        first = next((rank for rank, e in enumerate(everyone) if e is not None), None)
        if first is None:
            return
        if first == self.rank and error is not None:
            raise error  # the one rank that says it: the others raise SharedError, and stay quiet
        raise SharedError(*everyone[first])

    def agree_on_errors(self, problems: list[str], what: str) -> None:
        """Raise the same DistTrainError on every rank when any rank found a
        problem; `what` introduces the list."""
        found = [p for part in self.gather_object(problems) for p in part]
        if found:
            shown = "\n  ".join(sorted(set(found))[:10])
            raise DistTrainError(f"{what}:\n  {shown}")


#: The collective each thread is inside (thread id -> what, which group, the
#: group's sequence number), read by the stall watchdog to say where a rank waits.
INSIDE: dict[int, dict[str, Any]] = {}


class _Inside:
    """Marks the calling thread as inside a collective while it runs."""

    __slots__ = ("comm", "op", "shapes")

    def __init__(self, comm: "TorchComm", op: str, shapes: str) -> None:
        self.comm, self.op, self.shapes = comm, op, shapes

    def __enter__(self) -> None:
        c = self.comm
        INSIDE[threading.get_ident()] = {"op": self.op, "shapes": self.shapes, "group": c.name,
                                         "seq": c.sequence_number()}

    def __exit__(self, *exc: Any) -> None:
        INSIDE.pop(threading.get_ident(), None)


def _shapes(t: torch.Tensor) -> str:
    return f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}"


class TorchComm(Comm):
    """torch.distributed over the default group (or `group`)."""

    def __init__(self, env: Any, group: Any = None, name: str = "the job's group") -> None:
        import torch.distributed as dist

        self._dist, self.group, self.device, self.name = dist, group, env.device, name
        self.rank, self.world_size = env.rank, env.world_size

    def sequence_number(self) -> int | None:
        """How many collectives this group has started on this rank (torch's count)."""
        try:
            group = self.group or self._dist.distributed_c10d._get_default_group()
            return int(group._get_sequence_number_for_group())
        except Exception:  # an older torch, or a group torch does not count for
            return None

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        with _Inside(self, "all_reduce (sum)", _shapes(tensor)):
            self._dist.all_reduce(tensor, op=self._dist.ReduceOp.SUM, group=self.group)
        return tensor

    def agree_any(self, flag: bool) -> bool:
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        with _Inside(self, "all_reduce (max): agree_any", _shapes(t)):
            self._dist.all_reduce(t, op=self._dist.ReduceOp.MAX, group=self.group)
        return bool(t.item() > 0)

    def broadcast_object(self, obj: Any) -> Any:
        box = [obj]
        with _Inside(self, "broadcast_object_list", "a Python object"):
            self._dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def gather_object(self, obj: Any) -> list[Any]:
        gathered: list[Any] = [None] * self.world_size
        with _Inside(self, "all_gather_object", "a Python object"):
            self._dist.all_gather_object(gathered, obj, group=self.group)
        return gathered

    def barrier(self) -> None:
        with _Inside(self, "barrier", ""):
            self._dist.barrier(group=self.group)

    def side_group(self, timeout_s: float) -> "Comm":
        import datetime

        group = self._dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))
        return TorchComm(_CPU(self.rank, self.world_size), group, "the checkpoint writer's group")


class _CPU:
    """The little of a DistEnv a side group needs: gloo works on CPU tensors."""

    device = "cpu"

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size


class FakeComm(Comm):
    """For unit tests: one rank of a pretend job, no process group. The other
    ranks' contributions are given up front: `peers_any` for agree_any, and
    `from_rank0` for what rank 0 would broadcast (or share from
    `rank0_then_share`: a value, or an exception it raised)."""

    def __init__(self, rank: int, world_size: int, peers_any: bool = False, from_rank0: Any = None) -> None:
        self.rank, self.world_size = rank, world_size
        self.peers_any, self.from_rank0 = peers_any, from_rank0
        self.calls: list[str] = []
        self._sharing = False

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        self.calls.append("all_reduce_sum")
        return tensor.mul_(self.world_size)  # as if every rank held the same values

    def agree_any(self, flag: bool) -> bool:
        self.calls.append("agree_any")
        return bool(flag) or self.peers_any

    def broadcast_object(self, obj: Any) -> Any:
        self.calls.append("broadcast_object")
        if self.is_rank0:
            return obj
        if isinstance(self.from_rank0, BaseException):  # what rank0_then_share sends for an error
            return ("error", *_as_shared(self.from_rank0))
        return ("ok", self.from_rank0) if self._sharing else self.from_rank0

    def gather_object(self, obj: Any) -> list[Any]:
        self.calls.append("gather_object")
        return [obj] * self.world_size

    def barrier(self) -> None:
        self.calls.append("barrier")

    def rank0_then_share(self, fn: Callable[[], T]) -> T:
        self.calls.append("rank0_then_share")
        self._sharing = True
        try:
            return super().rank0_then_share(fn)
        finally:
            self._sharing = False
