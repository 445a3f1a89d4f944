"""`dist-train launch`: workers started by torch's own elastic launcher
(`torch.distributed.run`), never by a hand-made spawner."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from dist_train.job_decision import JobDecision
from dist_train.worker_env import set_nccl_flight_recorder

# Where each worker leaves its exit status ("RESTART-LOCALRANK" -> code), so the
# launcher knows how its workers ended even when torch's agent cannot tell it.
STATUS_DIR_VAR = "DIST_TRAIN_STATUS_DIR"
# What the launcher decided for a config's job, in that directory (launcher.worker reads it)
JOB_FILE = "job.json"


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
    g.add_argument("--monitor-interval", type=float, default=0.1,
                   help="seconds between worker health checks (default 0.1, as torchrun)")


def check_launch_arguments(args: argparse.Namespace) -> None:
    """Each launcher flag checked like a config key: one line naming the flag,
    the value and what is allowed (exit status 2)."""
    from dist_train.errors import DistTrainError

    def bad(flag: str, value: object, allowed: str) -> DistTrainError:
        return DistTrainError(f"{flag} {value!r} is not allowed: {allowed}")

    nproc = str(args.nproc_per_node)
    if nproc not in ("gpu", "cpu", "auto") and not (nproc.isdigit() and int(nproc) >= 1):
        raise bad("--nproc-per-node", args.nproc_per_node, "give the number of workers on this node (1 or more), or "
                                                           "gpu, cpu or auto as torchrun takes them")
    nnodes = str(args.nnodes).split(":")
    if len(nnodes) > 2 or not all(n.isdigit() and int(n) >= 1 for n in nnodes) or int(nnodes[0]) > int(nnodes[-1]):
        raise bad("--nnodes", args.nnodes, "give the number of nodes (1 or more), or MIN:MAX with 1 <= MIN <= MAX")
    if args.max_restarts < 0:
        raise bad("--max-restarts", args.max_restarts, "give 0 (no restarts) or more")
    if args.node_rank is not None and not 0 <= args.node_rank < int(nnodes[-1]):
        raise bad("--node-rank", args.node_rank, f"give a node rank from 0 to {int(nnodes[-1]) - 1}")
    if not args.monitor_interval > 0:
        raise bad("--monitor-interval", args.monitor_interval, "give a number of seconds greater than 0")
    if args.master_port is not None and not 0 < args.master_port < 65536:
        raise bad("--master-port", args.master_port, "give a TCP port from 1 to 65535")
    if args.rdzv_endpoint is not None:
        host, _, port = args.rdzv_endpoint.rpartition(":")
        if not args.rdzv_endpoint.strip() or (host and not (port.isdigit() and 0 < int(port) < 65536)):
            raise bad("--rdzv-endpoint", args.rdzv_endpoint, "give HOST or HOST:PORT of the first node")


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


def torchrun_argv(args: argparse.Namespace, worker_args: list[str],
                  worker: str = "launcher.worker", start_timeout_s: float | None = None) -> list[str]:
    from launcher.stop_signals import TORCH_HANDLES

    argv = ["--nproc-per-node", str(args.nproc_per_node), "--nnodes", str(args.nnodes),
            "--max-restarts", str(args.max_restarts), "--monitor-interval", str(args.monitor_interval),
            # TERM, INT and USR1 are ours (launcher/stop_signals.py); torch keeps HUP and QUIT
            "--signals-to-handle", TORCH_HANDLES]
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
    conf = args.rdzv_conf
    if start_timeout_s is not None and not single_node and "join_timeout" not in (conf or ""):
        # the nodes get dist.start_timeout_s to meet (torch's default: 600 s)
        conf = ",".join(c for c in (conf, f"join_timeout={int(max(1, start_timeout_s))}") if c)
    if conf is not None:
        argv += ["--rdzv-conf", conf]
    if args.local_addr is not None:
        argv += ["--local-addr", args.local_addr]
    return argv + ["-m", worker, *worker_args]


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
            if live_children():
                seen_workers, last_alive = True, now
                continue
            if not seen_workers or now - last_alive < self.grace_s:
                continue
            if self._store_reachable():
                last_alive = now  # torch's agent is at work (a restart, a slow rendezvous): look again later
                continue
            code = self._exit_code()
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

    def _exit_code(self) -> int:
        """0 when every worker of the last round succeeded; 3 when they stopped
        on a stall (their summary is printed); else 1."""
        codes = set(worker_statuses(self.status_dir).values())
        if codes == {0}:
            return 0
        return 3 if 3 in codes else 1


def live_children() -> list[int]:
    """This process's children that have not exited (the workers)."""
    me, found = os.getpid(), []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) "
        if int(fields[1]) == me and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def worker_statuses(status_dir: Path) -> dict[int, int]:
    """Exit status of each worker (by local rank) of the latest round of workers."""
    rounds: dict[int, dict[int, int]] = {}
    for path in status_dir.glob("*-*"):
        restart, local_rank = path.name.split("-", 1)
        try:
            rounds.setdefault(int(restart), {})[int(local_rank)] = int(path.read_text() or 1)
        except ValueError:
            continue
    return rounds[max(rounds)] if rounds else {}


def write_worker_status(code: int) -> None:
    """Called by each worker as it exits (see STATUS_DIR_VAR)."""
    directory = os.environ.get(STATUS_DIR_VAR)
    if directory:
        name = f"{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}-{os.environ.get('LOCAL_RANK', '0')}"
        try:
            Path(directory, name).write_text(str(code))
        except OSError:
            pass


def launch(args: argparse.Namespace, config: str, overrides: list[str], timeout_s: float = 120.0,
           run_dir: Path | None = Path("runs/default"), decided: JobDecision | None = None,
           worker: str = "launcher.worker", start_timeout_s: float | None = None) -> int:
    """Start the workers and wait for them; returns the launcher's exit status.
    `decided`: what this launcher loaded, checked and planned for a config's
    job (the lock it holds among it): each worker is handed it (launcher.worker)
    instead of the config. `worker`: the module each worker runs with `config`
    and `overrides` otherwise (a script's runner for `launch script.py`, whose
    run directory is not known here: run_dir None; predict's and evaluate's)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousTimeoutError
    from torch.distributed.run import main as torchrun_main

    from dist_train.errors import EXIT_RESUME, EXIT_STALLED, EXIT_USAGE
    from launcher.stop_signals import LauncherSignals, StopNow, report_stop, report_stop_now

    if "OMP_NUM_THREADS" not in os.environ and str(args.nproc_per_node) != "1":
        # What torchrun would choose, set here so it does not print a banner about it:
        # several workers on one node each get one intra-op thread.
        os.environ["OMP_NUM_THREADS"] = "1"
    status_dir = Path(tempfile.mkdtemp(prefix="dist-train-launch-"))
    os.environ[STATUS_DIR_VAR] = str(status_dir)
    set_nccl_flight_recorder(run_dir)
    worker_args = [config, *overrides]
    if decided is not None:
        decided.write(status_dir / JOB_FILE)
        worker_args = ["--job", str(status_dir / JOB_FILE)]
    endpoint = rendezvous_endpoint(args)
    if endpoint is not None and os.path.isdir("/proc"):
        # With restarts left, give the network timeout_s to come back; without,
        # nothing is left to wait for once the workers have ended.
        grace_s = max(timeout_s, 5.0) if args.max_restarts > 0 else 5.0
        StuckAgentWatchdog(endpoint, grace_s, status_dir).start()
    expected = int(args.nproc_per_node) if str(args.nproc_per_node).isdigit() else None
    if endpoint is not None:  # several nodes: say what this one waits for, since the wait can be long
        waits = f" (up to dist.start_timeout_s={start_timeout_s:g}s)" if start_timeout_s is not None else ""
        print(f"dist-train launch: meeting the other nodes of {args.nnodes} at the rendezvous {endpoint[0]}:"
              f"{endpoint[1]} (job id {args.rdzv_id}){waits}", file=sys.stderr, flush=True)
    signals = LauncherSignals(live_children, saves=worker != "launcher.inference_worker").install()
    quiet = _QuietAgent(stopping=lambda: signals.first is not None)
    agent_logs = [logging.getLogger(name) for name in AGENT_LOGGERS]
    for log in agent_logs:
        log.addFilter(quiet)
    try:
        torchrun_main(torchrun_argv(args, worker_args, worker, start_timeout_s))
    except RendezvousTimeoutError:
        where = f" at {endpoint[0]}:{endpoint[1]}" if endpoint is not None else ""
        waited = f"dist.start_timeout_s={start_timeout_s:g}s" if start_timeout_s is not None else "the rendezvous timeout"
        print(f"dist-train launch: the {args.nnodes} nodes did not all meet{where} (job id {args.rdzv_id}) within "
              f"{waited}; start the same command on every node, or raise dist.start_timeout_s (exit status "
              f"{EXIT_STALLED})", file=sys.stderr, flush=True)
        return EXIT_STALLED
    except SignalException as exc:
        # torch's agent passed the signal on to the workers and waited for them
        return report_stop(exc.sigval.name, worker_statuses(status_dir), expected, run_dir)
    except StopNow as exc:
        return report_stop_now(exc.signum, run_dir)
    except ChildFailedError as exc:
        # torchrun has printed its failure table; add the one line that matters
        codes = {f.exitcode for f in exc.failures.values()}
        if codes == {EXIT_RESUME}:  # every worker stopped on request (signalled directly) and saved
            return report_stop(None, worker_statuses(status_dir), expected, run_dir)
        detail = ""
        if exc.failures:
            rank, first = exc.get_first_failure()
            if first.exitcode == EXIT_USAGE and set(worker_statuses(status_dir).values()) == {EXIT_USAGE}:
                return EXIT_USAGE  # a mistake the workers agreed on and one of them said, once
            if EXIT_STALLED in codes:  # the workers have printed the summary
                where = run_dir / "hang" if run_dir is not None else "the run directory's hang/"
                print(f"dist-train launch: the job stopped: its ranks stalled or diverged (exit status {EXIT_STALLED}); the summary above "
                      f"and every rank's stacks are in {where}. Run the same command to resume from the newest "
                      f"complete checkpoint (--max-restarts does it by itself)", file=sys.stderr, flush=True)
                return EXIT_STALLED
            detail = f" (first failure: rank {rank}, exit code {first.exitcode})"
        print(f"dist-train launch: workers failed{detail}; see the worker output above", file=sys.stderr, flush=True)
        return 1
    finally:
        for log in agent_logs:
            log.removeFilter(quiet)
        quiet.release()
        signals.uninstall()
        shutil.rmtree(status_dir, ignore_errors=True)
    return 0


# torch's agent's loggers whose lines about an exit or a stop the launcher says better itself
AGENT_LOGGERS = ("torch.distributed.elastic.multiprocessing.api", "torch.distributed.elastic.agent.server.api")


class _QuietAgent(logging.Filter):
    """Drops torch's agent's log lines about what dist-train reports itself.

    A stop the launcher was asked for (TERM, INT or USR1: `stopping()` is
    true): the agent's "Received SIGTERM death signal, shutting down workers"
    and "Sending process N closing signal SIGTERM" lines, as it passes the
    signal on; the launcher has said it passes it on, and says how the
    workers ended. Workers that exited with status 2 (a user's mistake,
    which a worker has already said in one line), 3 (a stall, whose summary a
    worker has printed) or 75 (a stop, which the launcher reports itself):
    the "failed (exitcode: N)" line, and the "closing signal SIGTERM" lines
    the agent logs just before it, for peers that were ending anyway. Those
    are held until the agent's next line says whether they belong to such an
    exit; otherwise they are let through. Anything else (a worker killed
    after the shutdown wait, a failure) is let through."""

    STOP_LINES = ("death signal, shutting down workers", "closing signal")

    def __init__(self, stopping: Callable[[], bool] = lambda: False) -> None:
        super().__init__()
        self.stopping, self.held, self.releasing = stopping, [], False

    def filter(self, record: logging.LogRecord) -> bool:
        if self.releasing:
            return True
        message = record.getMessage()
        if self.stopping() and any(line in message for line in self.STOP_LINES):
            return False
        if "closing signal SIGTERM" in message:
            self.held.append(record)
            return False
        if any(f"(exitcode: {code})" in message for code in (2, 3, 75)):
            self.held.clear()
            return False
        self.release()
        return True

    def release(self) -> None:
        held, self.held = self.held, []
        self.releasing = True
        try:
            for record in held:
                logging.getLogger(record.name).handle(record)
        finally:
            self.releasing = False
