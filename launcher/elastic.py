"""`dist-train launch`: workers started by torch's own elastic launcher
(`torch.distributed.run`), never by a hand-made spawner."""

from __future__ import annotations

import argparse
import os
import sys


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


def launch(args: argparse.Namespace, config: str, overrides: list[str]) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from dist_train.callbacks import EXIT_RESUME
    from torch.distributed.run import main as torchrun_main

    if "OMP_NUM_THREADS" not in os.environ and str(args.nproc_per_node) != "1":
        # What torchrun would choose, set here so it does not print a banner about it:
        # several workers on one node each get one intra-op thread.
        os.environ["OMP_NUM_THREADS"] = "1"
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
    return 0
