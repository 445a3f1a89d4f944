"""Checkpoints: atomic, verified, retained, found again, loaded without unpickling.

Layout: RUN_DIR/checkpoints/step-00000120/
    model.pt        plain model state_dict: `torch.load(p, weights_only=True)` loads it without dist_train
    trainer.pt      optimizer, LR schedule, early stopping, progress, metrics line count, W&B run id, config
    best_model.pt   the best weights so far (only with early_stopping.restore_best)
    rank-00000.pt   per rank: RNG states (torch, numpy, python) and the unreduced running loss
    deepspeed/      DeepSpeed's own files (strategy.name=deepspeed), each in the manifest
    MANIFEST.json   written last: every file's size and SHA-256, and the progress

Order (every rank takes part): rank 0 makes the directory; barrier; each rank
writes its files to temporary names, fsyncs, renames, and computes their
digests; the digests are gathered to rank 0; barrier; rank 0 writes the
manifest (temporary name, fsync, rename, fsync of the directory). A directory
without a valid manifest is not a checkpoint: killing the job at any moment
leaves the previous checkpoint intact and the newest one ignored.

Nothing is ever unpickled: every file loads with `weights_only=True`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from dist_train.atomic import atomic_file
from dist_train.env import DistEnv
from dist_train.errors import DistTrainError, TrainingFailed

MANIFEST = "MANIFEST.json"
PREFIX = "step-"


def checkpoint_root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _HashingWriter:
    """A file that hashes what passes through it, on a second thread while the
    bytes go to disk (both release the GIL), so the digest costs neither a
    re-read nor extra time on the training's critical path."""

    def __init__(self, fh: Any) -> None:
        self.fh, self.digest, self.size = fh, hashlib.sha256(), 0
        self._pool = ThreadPoolExecutor(max_workers=1)  # one thread: updates stay in order
        self._pending: list[Future] = []

    def write(self, data: bytes) -> int:
        # a copy: torch may reuse the buffer once write() returns
        self._pending.append(self._pool.submit(self.digest.update, bytes(data)))
        self.size += len(data)
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()

    def hexdigest(self) -> str:
        for future in self._pending:
            future.result()
        self._pool.shutdown()
        return self.digest.hexdigest()


def _save_file(obj: Any, path: Path) -> dict[str, Any]:
    """torch.save to a temporary name, fsync, rename; returns size and SHA-256."""
    with atomic_file(path, "wb") as fh:
        writer = _HashingWriter(fh)
        torch.save(obj, writer)
    return {"bytes": writer.size, "sha256": writer.hexdigest()}


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain numbers (loadable with weights_only)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)},
             "python": {"version": version, "state": list(py_state), "gauss": gauss}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def prepare_checkpoint_dir(run_dir: Path, global_step: int, env: DistEnv, group: Any = None) -> Path:
    """Collective: rank 0 makes the (empty) directory of the step's checkpoint."""
    path = checkpoint_root(run_dir) / f"{PREFIX}{global_step:08d}"
    if env.is_rank0:
        if path.exists():  # an earlier, unfinished save of the same step
            shutil.rmtree(path)
        path.mkdir(parents=True)
    if env.is_distributed:
        dist.barrier(group=group)
    return path


def save_checkpoint(run_dir: Path, global_step: int, env: DistEnv, shared: dict[str, Any],
                    per_rank: dict[str, Any], info: dict[str, Any], group: Any = None,
                    own_files: dict[str, Any] | None = None, prepared: bool = False) -> Path:
    """Write one checkpoint. Collective: every rank calls it at the same step.
    `shared` (rank 0 only): name -> object for files written once (model, trainer, ...);
    `per_rank`: this rank's own state; `info`: progress and metrics for the manifest;
    `group`: the process group to coordinate on (default: the main one);
    `own_files`: files this rank already wrote into the directory (a strategy's
    own, e.g. DeepSpeed's), name -> {bytes, sha256}, for the manifest;
    `prepared`: the directory was made by `prepare_checkpoint_dir` already."""

    def sync() -> None:
        if env.is_distributed:
            dist.barrier(group=group)

    path = checkpoint_root(run_dir) / f"{PREFIX}{global_step:08d}"
    if not prepared:
        prepare_checkpoint_dir(run_dir, global_step, env, group)
    files: dict[str, Any] = dict(own_files or {})
    if env.is_rank0:
        for name, obj in shared.items():
            files[f"{name}.pt"] = _save_file(obj, path / f"{name}.pt")
    files[f"rank-{env.rank:05d}.pt"] = _save_file(per_rank, path / f"rank-{env.rank:05d}.pt")
    if env.is_distributed:
        gathered: list = [None] * env.world_size
        dist.all_gather_object(gathered, files, group=group)
        files = {k: v for part in gathered for k, v in part.items()}
    sync()
    if env.is_rank0:
        manifest = {"format": "dist-train-checkpoint/1", "global_step": global_step, "world_size": env.world_size,
                    **info, "files": files}
        with atomic_file(path / MANIFEST) as fh:
            json.dump(manifest, fh, indent=1)
        _fsync_dir(path)
    sync()
    return path


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    manifest: dict[str, Any]

    @property
    def global_step(self) -> int:
        return int(self.manifest["global_step"])


def verify_checkpoint(path: Path) -> CheckpointInfo:
    """The checkpoint at `path`, or DistTrainError saying what is wrong with it."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise DistTrainError(f"checkpoint {path} has no {MANIFEST} (its save did not finish)")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DistTrainError(f"checkpoint {path}: {MANIFEST} is unreadable ({exc})") from None
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            raise DistTrainError(f"checkpoint {path}: {name} is missing")
        size = file.stat().st_size
        if size != expected["bytes"]:
            raise DistTrainError(f"checkpoint {path}: {name} has {size} bytes, the manifest says {expected['bytes']} (truncated)")
        digest = hashlib.sha256()
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != expected["sha256"]:
            raise DistTrainError(f"checkpoint {path}: {name} does not match its SHA-256 (corrupt)")
    return CheckpointInfo(path, manifest)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint directories, newest first (by step), valid or not."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(dirs, key=lambda p: int(p.name[len(PREFIX):]), reverse=True)


def find_latest_valid(run_dir: Path, warn: Any = print) -> CheckpointInfo | None:
    """The newest checkpoint that verifies; each one skipped is reported through `warn`."""
    for path in list_checkpoints(run_dir):
        try:
            return verify_checkpoint(path)
        except DistTrainError as exc:
            warn(f"dist-train: skipping {exc}")
    return None


def agree_on_checkpoint(choice: CheckpointInfo | None, env: DistEnv) -> CheckpointInfo | None:
    """Rank 0's choice, on every rank (ranks must never load different checkpoints)."""
    if not env.is_distributed:
        return choice
    box = [None if choice is None else (str(choice.path), choice.manifest)]
    dist.broadcast_object_list(box, src=0)
    return None if box[0] is None else CheckpointInfo(Path(box[0][0]), box[0][1])


def load_file(path: Path, name: str) -> Any:
    file = path / name
    if not file.is_file():
        return None
    return torch.load(file, map_location="cpu", weights_only=True)


def snapshot(obj: Any, reuse: Any = None) -> Any:
    """A copy of every tensor in a nested state (on the CPU), so training can go
    on changing the originals while the copy is written. Tensors of an earlier
    snapshot with the same structure are reused: copying into memory already
    touched is several times faster than into fresh pages."""
    if isinstance(obj, torch.Tensor):
        if (isinstance(reuse, torch.Tensor) and reuse.shape == obj.shape and reuse.dtype == obj.dtype
                and reuse.device.type == "cpu"):
            return reuse.copy_(obj.detach())
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        prev = reuse if isinstance(reuse, dict) else {}
        return {k: snapshot(v, prev.get(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        prev = reuse if isinstance(reuse, (list, tuple)) and len(reuse) == len(obj) else [None] * len(obj)
        return type(obj)(snapshot(v, p) for v, p in zip(obj, prev))
    return obj


class AsyncCheckpointer:
    """Saves in the background: the state is copied in memory at the step
    boundary (the only stall), then a thread writes, hashes, gathers the digests
    and writes the manifest, coordinating over a gloo group of its own so it
    never interleaves with the training's collectives. One save at a time; a
    save that fails is raised at the next save or at `wait()`. A save that is
    cut short leaves no manifest, so the previous checkpoint stays the latest."""

    def __init__(self, env: DistEnv, timeout_s: float) -> None:
        self.env = env
        self.group = None
        if env.is_distributed:  # collective: every rank creates it at the same point
            import datetime

            self.group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._last: tuple[Any, Any] = (None, None)

    def save(self, run_dir: Path, global_step: int, shared: dict[str, Any], per_rank: dict[str, Any],
             info: dict[str, Any], after: Any = None, own_files: dict[str, Any] | None = None,
             prepared: bool = False) -> None:
        self.wait()  # the previous save is written: its copy can be reused
        shared, per_rank = snapshot(shared, self._last[0]), snapshot(per_rank, self._last[1])
        self._last = (shared, per_rank)

        def work() -> None:
            try:
                path = save_checkpoint(run_dir, global_step, self.env, shared, per_rank, info, group=self.group,
                                       own_files=own_files, prepared=prepared)
                if after is not None:
                    after(path)
            except BaseException as exc:  # reported on the training thread
                self._error = exc

        self._thread = threading.Thread(target=work, name=f"checkpoint-{global_step}", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            if isinstance(error, RuntimeError):  # a collective failed (a lost peer): the runner explains those
                raise error
            raise TrainingFailed(f"saving a checkpoint failed: {type(error).__name__}: {error}") from error


def apply_retention(run_dir: Path, keep_last: int, best_step: int | None, current: Path | None = None) -> list[Path]:
    """Delete all but the newest `keep_last` valid checkpoints and the best one.
    Unfinished saves older than the newest valid checkpoint go too. Rank 0 only."""
    valid, removed = [], []
    for path in list_checkpoints(run_dir):
        if (path / MANIFEST).is_file():
            valid.append(path)
        elif valid:  # an abandoned save, older than a valid checkpoint
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    keep = set(valid[:keep_last])
    if best_step is not None:
        keep.add(checkpoint_root(run_dir) / f"{PREFIX}{best_step:08d}")
    if current is not None:
        keep.add(current)
    for path in valid:
        if path not in keep:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
