"""`run()`: everything `dist-train run` does inside one worker, in order.

Validate against the job's shape, start the process group, agree on where to
start (fresh, or the latest valid checkpoint), prepare the run directory
(rank 0), train, tear down. Returns the process exit status."""

from __future__ import annotations

import gc
import os
import re
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from dist_train import checkpoint as ckpt
from dist_train.atomic import write_atomic
from dist_train.callbacks import EXIT_RESUME, StopRequest
from dist_train.config import Config, dump_yaml, to_dict
from dist_train.distributed import barrier, process_group
from dist_train.env import DistEnv
from dist_train.errors import DistTrainError, TrainingFailed
from dist_train.resolve import resolve
from dist_train.tracking import NullTracker, Tracker, WandbSink
from dist_train.trainer import Trainer


def run(cfg: Config, env: DistEnv, trainer_class: type[Trainer] = Trainer) -> int:
    resolved = resolve(cfg, env.world_size)  # raises before any process group starts
    if env.device == "cpu" and env.world_size > 1 and "OMP_NUM_THREADS" not in os.environ:
        # several CPU workers on one machine must not each spawn one thread per core
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(env.local_world_size, 1)))
    stop = StopRequest()
    try:
        with process_group(env, cfg.dist.timeout_s) as peers:
            # only now: until the loop runs, a signal must end the process as usual
            stop.install()
            try:
                return _train(cfg, env, resolved, stop, trainer_class)
            except RuntimeError as exc:
                if _is_lost_peer(exc):
                    who = f": {peers.roll_call()}" if peers is not None else ""
                    # gloo's first line, without its source-file prefix
                    cause = re.sub(r"^\[[^\]]*\]\s*", "", str(exc).splitlines()[0] if str(exc) else "")[:200]
                    raise TrainingFailed(
                        f"lost contact with another worker{who} ({cause}). A peer process died or the network "
                        f"failed (a collective waits at most dist.timeout_s={cfg.dist.timeout_s:g}s, then the job "
                        f"stops instead of hanging); run it again (or launch with --max-restarts) to resume from the "
                        f"last checkpoint in {cfg.run.dir}") from exc
                raise
    finally:
        stop.uninstall()


def _train(cfg: Config, env: DistEnv, resolved, stop: StopRequest, trainer_class: type[Trainer]) -> int:
    run_dir = Path(cfg.run.dir)
    start_from = _choose_start(cfg, env, run_dir)
    if start_from is not None and start_from.manifest.get("finished") and not _asks_for_more(cfg, start_from):
        if env.is_rank0:
            print(f"dist-train: the run in {run_dir} already finished (step {start_from.global_step}); "
                  "nothing to do. Pass --fresh to train again from scratch.", flush=True)
        return 0
    tracker: Tracker = NullTracker()
    if env.is_rank0:
        tracker = _rank0_tracker(cfg, run_dir, start_from)
    barrier(env)
    exit_code = 1
    try:
        trainer = trainer_class(cfg, env, resolved, tracker, run_dir=run_dir, stop=stop)
        trainer.wandb_run_id = tracker.run_id
        if start_from is not None:
            trainer.restore(start_from)
        result = trainer.fit()
        exit_code = EXIT_RESUME if result.stopped else 0
    finally:
        tracker.close(exit_code)
    # Free DDP's reducer (it sits in reference cycles) while the process group
    # still exists, and let every rank finish before anyone tears down: a
    # gloo peer that vanishes mid-teardown aborts the others.
    del trainer
    gc.collect()
    barrier(env)
    if result.stopped:
        if env.is_rank0:
            print(f"dist-train: stopped on request at step {result.steps}; checkpoint saved. Run the same command "
                  f"again to resume (exit status {EXIT_RESUME}).", file=sys.stderr, flush=True)
        return EXIT_RESUME
    return 0


def _rank0_tracker(cfg: Config, run_dir: Path, start_from: ckpt.CheckpointInfo | None) -> Tracker:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / "config.yaml", dump_yaml(cfg))
    lines = run_id = None
    if start_from is not None:
        saved = ckpt.load_file(start_from.path, "trainer.pt")
        lines, run_id = saved["metrics_lines"], saved["wandb_run_id"]
    sink = None
    if cfg.wandb.mode != "disabled":
        sink = WandbSink(cfg.wandb, run_dir, to_dict(cfg), run_id)
    progress = cfg.run.progress and sys.stderr.isatty()
    return Tracker(run_dir, truncate_to=lines, sink=sink, progress=progress)


def _choose_start(cfg: Config, env: DistEnv, run_dir: Path) -> ckpt.CheckpointInfo | None:
    """Rank 0 decides (fresh, latest valid, or the named checkpoint); every rank
    gets the same answer, or the same error."""
    choice, error = None, None
    if env.is_rank0:
        try:
            if cfg.run.resume == "never":
                _move_previous_run_aside(run_dir)
            elif cfg.run.resume == "auto":
                choice = ckpt.find_latest_valid(run_dir, warn=lambda m: print(m, file=sys.stderr, flush=True))
            else:
                choice = ckpt.verify_checkpoint(Path(cfg.run.resume))
        except DistTrainError as exc:
            error = str(exc)
    if env.is_distributed:
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        raise DistTrainError(error)
    choice = ckpt.agree_on_checkpoint(choice, env)
    if choice is not None and env.is_rank0:
        print(f"dist-train: resuming from {choice.path} (epoch {choice.manifest.get('epoch')}, "
              f"step {choice.global_step})", flush=True)
    return choice


def _asks_for_more(cfg: Config, info: ckpt.CheckpointInfo) -> bool:
    """A finished run goes on only when the config now asks for more epochs (and
    it did not stop early)."""
    return not info.manifest.get("early_stopped") and int(info.manifest.get("epoch", 0)) < cfg.train.epochs


def _move_previous_run_aside(run_dir: Path) -> None:
    """--fresh on a directory with an earlier run: keep it, renamed, never delete it."""
    if run_dir.exists() and any(run_dir.iterdir()):
        aside = run_dir.with_name(f"{run_dir.name}.previous-{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir.rename(aside)
        print(f"dist-train: starting afresh; the earlier run in {run_dir} was moved to {aside}", flush=True)


def _is_lost_peer(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(word in text for word in ("connection closed by peer", "connection reset", "timed out", "timeout",
                                         "broken pipe", "gloo", "nccl", "socket"))
