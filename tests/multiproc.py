"""Start N real worker processes over gloo, collect what each returns, re-raise
a worker's exception, and fail on a timeout instead of hanging the suite."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def to_numpy(value: Any) -> Any:
    """Tensors cross the process boundary as numpy arrays (plain pickles)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, dict):
        return {k: to_numpy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_numpy(v) for v in value)
    return value


# The workers fork from one server process per test process (multiprocessing's
# forkserver) that has imported these once, instead of each importing torch,
# the compiler its optimizers and DDP load, and the library anew as spawned
# ones did: 2 to 3 s of CPU less per worker (four integration files alone,
# one test process: 122 s -> 40 s). Forking after importing torch is what
# DataLoader's workers do; the server has run no torch op, so no thread pool
# or CUDA context is copied.
PRELOAD = ["torch", "torch._dynamo", "torch.export", "torch.distributed.fsdp", "torch.distributed.checkpoint", "pytest",
           "dist_train.api", "dist_train.run", "dist_train.inference", "dist_train.strategy.fsdp"]


def _context() -> Any:
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _entry(fn: Callable, rank: int, world_size: int, port: int, results: mp.Queue, args: tuple,
           pg_timeout_s: float, device: str, environ: dict[str, str]) -> None:
    try:
        # the server's environment is the one of its start: each worker gets the caller's of now
        os.environ.clear()
        os.environ.update(environ)
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                          LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        torch.set_num_threads(1)
        from dist_train.distributed import process_group
        from dist_train.env import DistEnv

        env = DistEnv.from_env(device=device)
        with process_group(env, pg_timeout_s):
            out = fn(env, *args)
        results.put((rank, True, to_numpy(out)))
    except BaseException:
        results.put((rank, False, traceback.format_exc()))


def run_workers(fn: Callable, world_size: int, *args: Any, timeout_s: float = 120.0,
                pg_timeout_s: float = 60.0, device: str = "cpu") -> list[Any]:
    """Run `fn(env, *args)` on `world_size` new processes joined by a process
    group (gloo on CPU; NCCL with device="cuda", one GPU per rank); return their
    results ordered by rank. `fn` must be importable (defined at module level)."""
    ctx = _context()
    results: mp.Queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(fn, r, world_size, port, results, args, pg_timeout_s, device,
                                              dict(os.environ)))
             for r in range(world_size)]
    for p in procs:
        p.start()
    got: dict[int, Any] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < world_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = sorted(set(range(world_size)) - set(got))
                raise TimeoutError(f"ranks {missing} did not finish within {timeout_s:.0f}s")
            try:
                rank, ok, payload = results.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                dead = [r for r, p in enumerate(procs) if p.exitcode is not None and r not in got]
                if not dead:
                    continue
                try:  # a process that just exited may still have its report in the pipe
                    rank, ok, payload = results.get(timeout=2.0)
                except queue.Empty:
                    raise RuntimeError(f"rank {dead[0]} exited with code {procs[dead[0]].exitcode} without a result") from None
            if not ok:
                raise RuntimeError(f"rank {rank} failed:\n{payload}")
            got[rank] = payload
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
    return [got[r] for r in range(world_size)]


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, grandchildren, ...), read from /proc.
    torch's launcher starts each worker in a session of its own, so killing the
    launcher's process group does not reach them; this does."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"{entry.path}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            children.setdefault(int(stat[stat.rfind(")") + 2:].split()[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL `pid` and everything below it (for test clean-up)."""
    for p in [pid, *descendants(pid)]:  # the root first, so that it starts no new ones
        try:
            os.kill(p, 9)
        except ProcessLookupError:
            pass


def worker_pids(launcher_pid: int) -> list[int]:
    """The `dist-train launch` workers below one launcher (not other runs' on this machine)."""
    found = []
    for pid in descendants(launcher_pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"launcher.worker" in f.read():
                    found.append(pid)
        except OSError:  # ended meanwhile
            pass
    return sorted(found)


def wait_for_step(run_dir, step: int, procs, timeout: float = 120) -> None:
    """Until RUN_DIR/metrics.jsonl shows a record at `step` or later (a condition,
    not a fixed sleep); fails when one of `procs` (a Popen or a list) ends first."""
    import re
    from pathlib import Path

    procs = procs if isinstance(procs, (list, tuple)) else [procs]
    deadline = time.monotonic() + timeout
    path = Path(run_dir) / "metrics.jsonl"
    while time.monotonic() < deadline:
        ended = [p for p in procs if p.poll() is not None]
        if ended:
            out = ended[0].stdout.read() if ended[0].stdout is not None else ""
            raise AssertionError(f"a launcher ended before step {step} (exit {ended[0].returncode}):\n{out}")
        if path.exists() and any(int(m) >= step for m in re.findall(r'"step": (\d+)', path.read_text())):
            return
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached within {timeout}s")
