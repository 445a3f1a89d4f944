"""The job's process group: started once with an explicit timeout, destroyed
at the end, and the peers' hosts, for naming a lost one. The collectives
themselves go through `dist_train.comm.Comm`.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from dist_train import collective_check
from dist_train.env import DistEnv


# How long a roll call after a failed collective waits for the other ranks to
# check in. Ranks that lost the same peer fail within about a second of each
# other (a reset connection at once, a timed-out one after dist.timeout_s, both
# counted from the same collective), so a few seconds tell the lost from the living.
ROLL_CALL_S = 5.0


@dataclass(frozen=True)
class Peers:
    """Where each rank runs, learned once when the group starts, so that a
    failure can name the peer that was lost instead of "another worker"."""

    env: DistEnv
    hosts: tuple[str, ...]  # per rank: "hostname (address)"
    store_prefix: str  # where in the job's store this group holds its roll call
    pids: tuple[int, ...] = ()  # per rank: its process id

    def training_timeout(self, seconds: float) -> None:
        """From now on a collective of the job's group waits at most `seconds`
        (until now: the start-up timeout)."""
        from torch.distributed.distributed_c10d import _set_pg_timeout

        _set_pg_timeout(datetime.timedelta(seconds=seconds))

    def _client(self, wait_s: float) -> Any:
        """A client of the job's store, or an OSError when it cannot be reached."""
        env = self.env
        # a plain connection first: torch's client would retry noisily for wait_s
        socket.create_connection((env.master_addr, env.master_port), timeout=wait_s).close()
        return dist.TCPStore(env.master_addr, env.master_port, is_master=False,
                             timeout=datetime.timedelta(seconds=wait_s), wait_for_workers=False)

    def announce(self, key: str, value: str, wait_s: float = ROLL_CALL_S) -> bool:
        """Set `key` in this group's part of the job's store; False when the store cannot be reached."""
        try:
            dist.PrefixStore(self.store_prefix, self._client(wait_s)).set(key, value)
            return True
        except Exception:  # the store's host, or the network to it, is gone
            return False

    def announced(self, key: str, client: Any) -> str | None:
        """`key`'s value in this group's part of the store (through `client`), or None."""
        store = dist.PrefixStore(self.store_prefix, client)
        return store.get(key).decode() if store.check([key]) else None

    def roll_call(self, wait_s: float = ROLL_CALL_S, name: str = "roll-call") -> str:
        """Called by each rank whose collective failed: check in at the job's
        store and see who else does within `wait_s`. Returns a sentence naming
        the ranks (and hosts) that did not answer, or the store if it cannot be
        reached."""
        missing = self.missing(wait_s, name)
        if missing is None:
            return self._store_unreachable()
        if not missing:
            return "every rank answered a roll call afterwards: a peer was slower than the timeout, or the network dropped for a while"
        return f"no answer within {wait_s:g}s from {self.describe(missing)}"

    def missing(self, wait_s: float = ROLL_CALL_S, name: str = "roll-call") -> list[int] | None:
        """Check in at the job's store under `name` and wait up to `wait_s` for
        the other ranks to do so: the ranks that did not (None: the store cannot
        be reached). Never blocks much longer than `wait_s` (the store client
        runs on a thread it does not wait for beyond that)."""
        answer: list[list[int] | None] = []
        thread = threading.Thread(target=lambda: answer.append(self._missing(wait_s, name)), daemon=True)
        thread.start()
        thread.join(2 * wait_s + 5)
        return answer[0] if answer else None

    def describe(self, ranks: list[int]) -> str:
        """"rank 1 on host-b (10.0.0.2); ranks 2,3 on host-c (...)"."""
        by_host: dict[str, list[int]] = {}
        for r in ranks:
            by_host.setdefault(self.hosts[r], []).append(r)
        return "; ".join(f"rank{'s' if len(rs) > 1 else ''} {','.join(map(str, rs))} on {host}"
                         for host, rs in by_host.items())

    def _missing(self, wait_s: float, name: str) -> list[int] | None:
        env = self.env
        try:
            store = dist.PrefixStore(f"{self.store_prefix}/{name}", self._client(wait_s))
            store.set(str(env.rank), "here")
            deadline = time.monotonic() + wait_s
            missing = [r for r in range(env.world_size) if r != env.rank]
            while missing and time.monotonic() < deadline:
                missing = [r for r in missing if not store.check([str(r)])]
                if missing:
                    time.sleep(0.1)
        except Exception:  # the store itself is gone: its host, or the network to it
            return None
        return missing

    def _store_unreachable(self) -> str:
        """Names the ranks on the store's host: those are the peers this rank lost."""
        env = self.env
        try:
            address = socket.gethostbyname(env.master_addr)
        except OSError:
            address = env.master_addr
        there = [r for r, h in enumerate(self.hosts) if h.endswith(f"({address})") or h.split(" ")[0] == env.master_addr]
        if env.rank in there or not there:
            return (f"cannot reach the job's store at {env.master_addr}:{env.master_port}: its host or the network "
                    f"to it is down")
        ranks = ",".join(map(str, there))
        return (f"cannot reach rank{'s' if len(there) > 1 else ''} {ranks} on {self.hosts[there[0]]} nor the job's "
                f"store there ({env.master_addr}:{env.master_port}): that host or the network to it is down")


def _this_host(env: DistEnv) -> str:
    """This host's name and the address it reaches the job's store from."""
    address = "?"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((socket.gethostbyname(env.master_addr), env.master_port))  # picks the route; sends nothing
            address = s.getsockname()[0]
    except OSError:
        pass
    return f"{socket.gethostname()} ({address})"


@contextlib.contextmanager
def process_group(env: DistEnv, timeout_s: float, group_of_one: bool = False,
                  check_collectives: bool = False) -> Iterator[Peers | None]:
    """The job's process group, started with an explicit timeout (so a lost peer
    fails the job instead of hanging for torch's 30 minutes; `timeout_s` is
    the start-up's, until `Peers.training_timeout` says otherwise) and
    destroyed on leaving. With one worker there is none, unless `group_of_one`
    (DDP and DeepSpeed need one): then an in-memory group of one. Yields where
    each rank runs (None with one worker), for naming a lost peer.
    `check_collectives`: every collective first checks that every rank calls
    the same one with the same shapes (dist_train.collective_check)."""
    if dist.is_initialized():  # a caller's group (a test harness): it owns it
        yield None
        return
    if env.device.startswith("cuda"):
        torch.cuda.set_device(env.device)
    if not env.is_distributed:
        if not group_of_one:
            yield None
            return
        dist.init_process_group(env.backend, store=dist.HashStore(), rank=0, world_size=1,
                                timeout=datetime.timedelta(seconds=timeout_s))
        try:
            yield None
        finally:
            dist.destroy_process_group()
        return
    kwargs: dict = {}
    if env.backend == "nccl":
        kwargs["device_id"] = torch.device(env.device)
    prefix = "dist-train"
    if env.agent_store:
        # Under torchrun the agent's store outlives a restart of the workers, with
        # the previous group's addresses still in it: restarted workers would try
        # to connect to peers that are gone. So each start of the group gets keys
        # of its own. TORCHELASTIC_RESTART_COUNT cannot name the start: it counts
        # this node's failures, and a node restarted because another one failed
        # keeps its count. What every rank of a new group shares is how many
        # groups of this world size have started (each starts every rank once),
        # which each rank counts for itself.
        store = dist.TCPStore(env.master_addr, env.master_port, env.world_size, is_master=False,
                              timeout=datetime.timedelta(seconds=timeout_s))
        start = store.add(f"dist-train/starts/world-{env.world_size}/rank-{env.rank}", 1)
        prefix = f"dist-train/world-{env.world_size}/start-{start}"
        kwargs["store"] = dist.PrefixStore(prefix, store)
    dist.init_process_group(
        backend=env.backend,
        rank=env.rank,
        world_size=env.world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
        **kwargs,
    )
    try:
        where: list[Any] = [None] * env.world_size
        dist.all_gather_object(where, (_this_host(env), os.getpid()))
        if check_collectives:
            collective_check.start(env.rank, env.world_size)
        yield Peers(env, tuple(h for h, _ in where), prefix, tuple(p for _, p in where))
    finally:
        collective_check.stop()
        dist.destroy_process_group()
