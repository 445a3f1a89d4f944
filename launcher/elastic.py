"""`dist-train launch`: workers started by torch's own elastic launcher
(`torch.distributed.run`), never by a hand-made spawner."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

# Where each worker leaves its exit status ("RESTART-LOCALRANK" -> code), so the
# launcher knows how its workers ended even when torch's agent cannot tell it.
STATUS_DIR_VAR = "DIST_TRAIN_STATUS_DIR"


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("workers (passed to torch.distributed.run)")
    g.add_argument("--nproc-per-node", default="1",
                   help="workers on this node: an integer, or 'gpu'/'cpu'/'auto' as torchrun takes (default 1)")
    g.add_argument("--nnodes", default="1", help="number of nodes, or MIN:MAX for an elastic range (default 1)")
    g.add_argument("--node-rank", type=int, default=None, help="this node's rank with static rendezvous (--master-addr)")
    g.add_argument("--rdzv-endpoint", default=None, help="HOST:PORT of the c10d rendezvous (usually the first node)")
    g.add_argument("--rdzv-backend", default="c10d", help="rendezvous backend (default c10d)")
    g.add_argument("--rdzv-id", default=None, help="job id shared by all nodes of one job")
    g.add_argument("--rdzv-conf", default=None, help="extra rendezvous settings, key=value,...")
    g.add_argument("--master-addr", default=None, help="static rendezvous address (with --node-rank)")
    g.add_argument("--master-port", type=int, default=None, help="static rendezvous port")
    g.add_argument("--local-addr", default=None, help="address of this node that peers should use")
    g.add_argument("--max-restarts", type=int, default=0,
                   help="restart all workers up to this many times after a failure (default 0: fail at once)")
    g.add_argument("--monitor-interval", type=float, default=0.5, help="seconds between worker health checks")


def planned_world_size(args: argparse.Namespace) -> int | None:
    """The world size when it is known before rendezvous (fixed node count, numeric
    workers per node); None for elastic ranges or device-dependent counts."""
    try:
        nproc = int(args.nproc_per_node)
    except ValueError:
        return None
    if ":" in str(args.nnodes):
        low, high = str(args.nnodes).split(":", 1)
        if low != high:
            return None
        nnodes = int(low)
    else:
        nnodes = int(args.nnodes)
    return nproc * nnodes


def torchrun_argv(args: argparse.Namespace, config: str, overrides: list[str]) -> list[str]:
    argv = ["--nproc-per-node", str(args.nproc_per_node), "--nnodes", str(args.nnodes),
            "--max-restarts", str(args.max_restarts), "--monitor-interval", str(args.monitor_interval)]
    single_node = str(args.nnodes) in ("1", "1:1")
    if args.master_addr is not None:  # static rendezvous: every node names the same master
        argv += ["--master-addr", args.master_addr, "--node-rank", str(args.node_rank or 0)]
        if args.master_port is not None:
            argv += ["--master-port", str(args.master_port)]
    elif args.rdzv_endpoint is not None:
        argv += ["--rdzv-backend", args.rdzv_backend, "--rdzv-endpoint", args.rdzv_endpoint]
        if args.rdzv_id is not None:
            argv += ["--rdzv-id", args.rdzv_id]
        if args.node_rank is not None:
            argv += ["--node-rank", str(args.node_rank)]
    elif single_node:
        argv += ["--standalone"]  # a private rendezvous on a free port
    if args.rdzv_conf is not None:
        argv += ["--rdzv-conf", args.rdzv_conf]
    if args.local_addr is not None:
        argv += ["--local-addr", args.local_addr]
    return argv + ["-m", "launcher.worker", config, *overrides]


def rendezvous_endpoint(args: argparse.Namespace) -> tuple[str, int] | None:
    """HOST, PORT of the store the nodes of a multi-node job meet at; None on one node."""
    if str(args.nnodes) in ("1", "1:1"):
        return None
    if args.master_addr is not None:
        return args.master_addr, args.master_port or 29500
    if args.rdzv_endpoint is None:
        return None
    host, _, port = args.rdzv_endpoint.rpartition(":")
    if not host or not port.isdigit():  # no port: torchrun's default for c10d
        host, port = args.rdzv_endpoint, "29400"
    return host.strip("[]"), int(port)


class StuckAgentWatchdog(threading.Thread):
    """Ends this launcher when torch's agent waits on a rendezvous store that is gone.

    torch's elastic agent reads from the rendezvous store with blocking socket
    calls. When the store's host drops off the network (a link down, not a dead
    process, which would reset the connection), the agent can wait forever, even
    after its workers failed and exited: seen with torch 2.13, blocked in
    TCPStore.get under num_nodes_waiting while the link stayed down. So: once
    this node has had no live worker for `grace_s` seconds and the store does
    not accept a connection, print what happened and exit (0 if every worker of
    the last round reported success, else 1)."""

    def __init__(self, endpoint: tuple[str, int], grace_s: float, status_dir: Path, poll_s: float = 1.0) -> None:
        super().__init__(name="dist-train-watchdog", daemon=True)
        self.endpoint, self.grace_s, self.status_dir, self.poll_s = endpoint, grace_s, status_dir, poll_s

    def run(self) -> None:
        seen_workers, last_alive = False, time.monotonic()
        while True:
            time.sleep(self.poll_s)
            now = time.monotonic()
            if _live_children():
                seen_workers, last_alive = True, now
                continue
            if not seen_workers or now - last_alive < self.grace_s:
                continue
            if self._store_reachable():
                last_alive = now  # torch's agent is at work (a restart, a slow rendezvous): look again later
                continue
            code = 0 if self._workers_succeeded() else 1
            host, port = self.endpoint
            print(f"dist-train launch: this node's workers ended {now - last_alive:.0f}s ago and the "
                  f"rendezvous store at {host}:{port} does not answer: that node is down or the network to it is "
                  f"cut. Giving up instead of waiting on it (exit status {code}).", file=sys.stderr, flush=True)
            shutil.rmtree(self.status_dir, ignore_errors=True)
            os._exit(code)  # the agent's thread is blocked in a socket read; nothing else would end it

    def _store_reachable(self) -> bool:
        try:
            with socket.create_connection(self.endpoint, timeout=3):
                return True
        except OSError:
            return False

    def _workers_succeeded(self) -> bool:
        codes: dict[int, list[int]] = {}
        for path in self.status_dir.glob("*-*"):
            restart, _ = path.name.split("-", 1)
            codes.setdefault(int(restart), []).append(int(path.read_text() or 1))
        return bool(codes) and all(c == 0 for c in codes[max(codes)])


def _live_children() -> bool:
    """Whether this process has a child that has not exited (a worker)."""
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) "
        if int(fields[1]) == me and fields[0] != "Z":
            return True
    return False


def write_worker_status(code: int) -> None:
    """Called by each worker as it exits (see STATUS_DIR_VAR)."""
    directory = os.environ.get(STATUS_DIR_VAR)
    if directory:
        name = f"{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}-{os.environ.get('LOCAL_RANK', '0')}"
        try:
            Path(directory, name).write_text(str(code))
        except OSError:
            pass


def launch(args: argparse.Namespace, config: str, overrides: list[str], timeout_s: float = 120.0) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from dist_train.callbacks import EXIT_RESUME
    from torch.distributed.run import main as torchrun_main

    if "OMP_NUM_THREADS" not in os.environ and str(args.nproc_per_node) != "1":
        # What torchrun would choose, set here so it does not print a banner about it:
        # several workers on one node each get one intra-op thread.
        os.environ["OMP_NUM_THREADS"] = "1"
    status_dir = Path(tempfile.mkdtemp(prefix="dist-train-launch-"))
    os.environ[STATUS_DIR_VAR] = str(status_dir)
    endpoint = rendezvous_endpoint(args)
    if endpoint is not None and os.path.isdir("/proc"):
        # With restarts left, give the network timeout_s to come back; without,
        # nothing is left to wait for once the workers have ended.
        grace_s = max(timeout_s, 5.0) if args.max_restarts > 0 else 5.0
        StuckAgentWatchdog(endpoint, grace_s, status_dir).start()
    def usr1_like_sigterm(signum: int, frame: object) -> None:
        # what torch's agent does on SIGTERM: it ends its loop, passes the signal
        # to the workers and waits for them (to save and exit 75)
        raise SignalException(f"Process {os.getpid()} got signal: {signum}", sigval=signal.Signals(signum))

    # SLURM's preemption notice (--signal=USR1) reaches every process of the job
    # step. torchrun handles TERM, INT, HUP and QUIT only (before torch 2.9, and
    # by default after): USR1 would kill it and leave its workers behind.
    previous_usr1 = signal.signal(signal.SIGUSR1, usr1_like_sigterm)
    try:
        torchrun_main(torchrun_argv(args, config, overrides))
    except SignalException as exc:
        # torchrun passed the signal on to the workers, which save a checkpoint at
        # their next step boundary and exit before it returns
        print(f"dist-train launch: stopped by signal {exc.sigval.name}; the workers were asked to save a "
              f"checkpoint and stop. Run the same command again to resume.", file=sys.stderr, flush=True)
        return EXIT_RESUME
    except ChildFailedError as exc:
        # torchrun has printed its failure table; add the one line that matters
        codes = {f.exitcode for f in exc.failures.values()}
        if codes == {EXIT_RESUME}:  # every worker stopped on request and saved
            return EXIT_RESUME
        detail = ""
        if exc.failures:
            rank, first = exc.get_first_failure()
            detail = f" (first failure: rank {rank}, exit code {first.exitcode})"
        print(f"dist-train launch: workers failed{detail}; see the worker output above", file=sys.stderr, flush=True)
        return 1
    finally:
        signal.signal(signal.SIGUSR1, previous_usr1)
        shutil.rmtree(status_dir, ignore_errors=True)
    return 0
