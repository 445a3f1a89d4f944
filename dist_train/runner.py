"""`run()`: everything `dist-train run` does inside one worker, in order.

Validate against the job's shape, start the process group, prepare the run
directory (rank 0), train, tear down."""

from __future__ import annotations

import gc
import os
import tempfile
from pathlib import Path

import torch

from dist_train.config import Config, dump_yaml
from dist_train.distributed import barrier, process_group
from dist_train.env import DistEnv
from dist_train.resolve import resolve
from dist_train.tracking import NullTracker, Tracker
from dist_train.trainer import FitResult, Trainer


def run(cfg: Config, env: DistEnv) -> FitResult:
    resolved = resolve(cfg, env.world_size)  # raises before any process group starts
    if env.device == "cpu" and env.world_size > 1 and "OMP_NUM_THREADS" not in os.environ:
        # several CPU workers on one machine must not each spawn one thread per core
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(env.local_world_size, 1)))
    with process_group(env, cfg.dist.timeout_s):
        run_dir = Path(cfg.run.dir)
        tracker: Tracker = NullTracker()
        if env.is_rank0:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(run_dir / "config.yaml", dump_yaml(cfg))
            tracker = Tracker(run_dir)
        barrier(env)
        try:
            trainer = Trainer(cfg, env, resolved, tracker)
            result = trainer.fit()
        finally:
            tracker.close()
        # Free DDP's reducer (it sits in reference cycles) while the process group
        # still exists, and let every rank finish before anyone tears down: a
        # gloo peer that vanishes mid-teardown aborts the others.
        del trainer
        gc.collect()
        barrier(env)
        return result


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary name in the same directory, fsync, rename: a reader
    sees the old file or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
