"""Checkpoints: atomic, verified, retained, found again, loaded without unpickling.

A `Checkpointer` saves and loads named parts that follow torch's `Stateful`
protocol (`state_dict()` / `load_state_dict()`), each into its file:

Layout: RUN_DIR/checkpoints/step-00000120/
    model.pt        the model's weights, a plain state_dict: `torch.load(p, weights_only=True)` loads it without dist_train
    trainer.pt      {part name: state} of the parts shared by all ranks: the strategy (optimizer, loss
                    scaler), the LR schedule, early stopping, the TrainState (progress, best values, ...)
    best_model.pt   the best weights so far (only with early_stopping.restore_best)
    rank-00000.pt   per rank: its random streams and its unreduced running loss
    deepspeed/      DeepSpeed's own files (strategy.name=deepspeed), written through the checkpointer's writer
    MANIFEST.json   written last: every file's size and SHA-256, the progress, the validation metrics, the
                    config, the metrics.jsonl line count and the W&B run id (what a resume plans with)

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
import shutil
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from dist_train.atomic import atomic_file
from dist_train.comm import Comm
from dist_train.config import CheckpointConfig
from dist_train.errors import DistTrainError, TrainingFailed, taken_from
from dist_train.monitor import Monitor
from dist_train.train_state import TrainState

@runtime_checkable
class Stateful(Protocol):
    """torch's `torch.distributed.checkpoint.stateful.Stateful` protocol, declared
    here because importing torch.distributed.checkpoint costs about a second
    at every start."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


MANIFEST = "MANIFEST.json"
PREFIX = "step-"
FORMAT = "dist-train-checkpoint/2"  # 1: trainer.pt before named parts (still loaded)


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

    def __init__(self, fh: Any, progress: Any = None) -> None:
        self.fh, self.digest, self.size, self.progress = fh, hashlib.sha256(), 0, progress
        self._pool = ThreadPoolExecutor(max_workers=1)  # one thread: updates stay in order
        self._pending: list[Future] = []

    def write(self, data: bytes) -> int:
        # a copy: torch may reuse the buffer once write() returns
        self._pending.append(self._pool.submit(self.digest.update, bytes(data)))
        self.size += len(data)
        written = self.fh.write(data)
        if self.progress is not None:
            self.progress()  # a piece of a checkpoint written is progress (the stall watchdog)
        return written

    def flush(self) -> None:
        self.fh.flush()

    def hexdigest(self) -> str:
        for future in self._pending:
            future.result()
        self._pool.shutdown()
        return self.digest.hexdigest()


def _save_file(obj: Any, path: Path, progress: Any = None) -> dict[str, Any]:
    """torch.save to a temporary name, fsync, rename; returns size and SHA-256.
    `progress` is called after every piece written."""
    with atomic_file(path, "wb") as fh:
        writer = _HashingWriter(fh, progress)
        torch.save(obj, writer)
    return {"bytes": writer.size, "sha256": writer.hexdigest()}


class FileWriter:
    """Hands a strategy the checkpoint directory: each file it saves through
    `save` is written atomically and listed in the manifest with its digest."""

    def __init__(self, directory: Path, progress: Any = None, group: Any = None) -> None:
        self.directory, self.progress = Path(directory), progress
        self.written: dict[str, dict[str, Any]] = {}
        #: the checkpoint writer's own gloo group (None with one worker): for a
        #: strategy that writes in the background, away from the training's collectives
        self.group = group
        #: what completes the files a strategy writes in the background: called
        #: by the checkpoint's thread before the manifest is written
        self.finishing: list[Any] = []

    def save(self, obj: Any, path: Path) -> None:
        self.written[os.path.relpath(path, self.directory)] = _save_file(obj, Path(path), self.progress)

    def record(self, path: Path) -> None:
        """A file the strategy wrote itself (complete and synced): listed with its digest."""
        self.written[os.path.relpath(path, self.directory)] = file_digest(Path(path))


def _make_dir(path: Path, comm: Comm) -> None:
    """Collective: rank 0 makes the (empty) directory of the step's checkpoint."""
    if comm.is_rank0:
        if path.exists():  # an earlier, unfinished save of the same step
            shutil.rmtree(path)
        path.mkdir(parents=True)
    comm.barrier()


def _write(path: Path, comm: Comm, shared: dict[str, Any], per_rank: dict[str, Any], info: dict[str, Any],
           written: dict[str, Any], made: bool, progress: Any = None) -> None:
    """Write one checkpoint; collective, every rank at the same step.
    `shared` (rank 0): file name -> object; `per_rank`: this rank's own state;
    `written`: files a strategy already wrote there (with digests); `made`:
    the directory exists already."""
    if not made:
        _make_dir(path, comm)
    files: dict[str, Any] = dict(written)
    if comm.is_rank0:
        for name, obj in shared.items():
            files[name] = _save_file(obj, path / name, progress)
    files[f"rank-{comm.rank:05d}.pt"] = _save_file(per_rank, path / f"rank-{comm.rank:05d}.pt", progress)
    files = {k: v for part in comm.gather_object(files) for k, v in part.items()}
    comm.barrier()
    if comm.is_rank0:
        manifest = {"format": FORMAT, "global_step": int(path.name[len(PREFIX):]), "world_size": comm.world_size,
                    **info, "files": files}
        with atomic_file(path / MANIFEST) as fh:
            json.dump(manifest, fh, indent=1)
        _fsync_dir(path)
    comm.barrier()


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    manifest: dict[str, Any]

    @property
    def global_step(self) -> int:
        return int(self.manifest["global_step"])


def file_digest(path: Path) -> dict[str, Any]:
    """A file's size and SHA-256, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": Path(path).stat().st_size, "sha256": digest.hexdigest()}


def verify_checkpoint(path: Path) -> CheckpointInfo:
    """The checkpoint at `path`, or DistTrainError saying what is wrong with it."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not path.is_dir():
        raise DistTrainError(f"checkpoint {path}{taken_from(path)} does not exist: name a checkpoint directory "
                             "(RUN_DIR/checkpoints/step-N)")
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
        if file_digest(file)["sha256"] != expected["sha256"]:
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


def load_file(path: Path, name: str) -> Any:
    file = path / name
    if not file.is_file():
        return None
    return torch.load(file, map_location="cpu", weights_only=True)


_SCALARS = (int, float, str, bool, type(None))


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
        if all(isinstance(v, _SCALARS) for v in obj):  # an RNG's state: 600 numbers, nothing to copy deeper
            return type(obj)(obj)
        prev = reuse if isinstance(reuse, (list, tuple)) and len(reuse) == len(obj) else [None] * len(obj)
        return type(obj)(snapshot(v, p) for v, p in zip(obj, prev))
    return obj


@dataclass
class CheckpointParts:
    """What a checkpoint holds, by file. `shared`: file name -> a part (its
    state is the file) or a mapping of named parts (the file holds
    {name: state}); every rank computes these states (a sharded model's weights
    are gathered collectively), rank 0 writes them, and a state of None writes
    no file. `per_rank`: this rank's own parts (rank-NNNNN.pt). `files`: an
    object that writes files of its own through a FileWriter and reads them
    back (a strategy: `save_files(writer)`, `load_files(directory)`), or None."""

    shared: dict[str, Stateful | dict[str, Stateful]]
    per_rank: dict[str, Stateful]
    files: Any = None


def _state(part: Stateful | dict[str, Stateful]) -> Any:
    if isinstance(part, dict):
        return {name: p.state_dict() for name, p in part.items()}
    return part.state_dict()


class Checkpointer:
    """Saves and loads checkpoints of `CheckpointParts` in `run_dir`.

    A save copies every state in memory at the step boundary (the only stall),
    then a thread writes, hashes, gathers the digests and writes the manifest,
    coordinating over a gloo group of its own so it never interleaves with the
    training's collectives. Files a strategy writes itself go first, on the
    training thread (they are collectives of the strategy's own). One save at
    a time; a save that fails is raised at the next save or at `wait()`. A
    save cut short leaves no manifest, so the previous checkpoint stays the
    latest. Retention runs after each save (rank 0)."""

    def __init__(self, run_dir: Path, comm: Comm, env: Any, timeout_s: float,
                 policy: CheckpointConfig = CheckpointConfig(), progress: Any = None) -> None:
        self.run_dir, self.comm, self.env, self.timeout_s = Path(run_dir), comm, env, timeout_s
        self.policy, self.keep_last = policy, policy.keep_last
        self.kept = Monitor(policy.monitor)  # "better" for the best checkpoint retention keeps
        self.progress = progress  # called for every piece of a file written (the stall watchdog's progress)
        self.last_step = -1  # of the checkpoint saved or loaded last
        self._side: Comm | None = None  # the saving thread's own group, made at the first save
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._last: tuple[Any, Any] = (None, None)

    # ------------------------------------------------------------ what to save, what to keep

    def due_after_step(self, global_step: int) -> bool:
        """checkpoint.every_steps: a save after this optimizer step."""
        return bool(self.policy.every_steps) and global_step % self.policy.every_steps == 0

    def due_after_epoch(self, epochs_done: int) -> bool:
        """checkpoint.every_epochs: a save after this many epochs (and their validation)."""
        return bool(self.policy.every_epochs) and epochs_done % self.policy.every_epochs == 0

    def best_to_keep(self, state: TrainState) -> int | None:
        """The step of the checkpoint retention keeps whatever its age (checkpoint.keep_best):
        the best by checkpoint.monitor, measured at an epoch's end. The choice is
        remembered in `state` (checkpointed, so a resumed run keeps the same one)."""
        value = state.last_val.get(self.policy.monitor)
        if value is not None and state.step_in_epoch == 0 and self.kept.improves(
                value, state.best_checkpoint[0] if state.best_checkpoint else None):
            state.best_checkpoint = [value, state.global_step]
        return state.best_checkpoint[1] if state.best_checkpoint and self.policy.keep_best else None

    def saved(self, step: int) -> bool:
        return self.last_step == step

    def path(self, step: int) -> Path:
        return checkpoint_root(self.run_dir) / f"{PREFIX}{step:08d}"

    def save(self, step: int, parts: CheckpointParts, info: dict[str, Any], keep_step: int | None = None) -> Path:
        """Collective. `info`: what the manifest records beside the files;
        `keep_step`: a checkpoint retention keeps whatever its age (the best)."""
        shared = {name: _state(part) for name, part in parts.shared.items()}  # collectives inside, on every rank
        shared = {name: state for name, state in shared.items() if state is not None} if self.comm.is_rank0 else {}
        per_rank = {name: part.state_dict() for name, part in parts.per_rank.items()}
        path, written, made, finishing = self.path(step), {}, False, []
        if self._side is None:
            self._side = self.comm.side_group(self.timeout_s)
        if parts.files is not None and parts.files.writes_files:
            self.wait()  # the directory may be the one a previous save still writes
            _make_dir(path, self.comm)
            writer = FileWriter(path, self.progress, getattr(self._side, "group", None))
            parts.files.save_files(writer)
            written, made, finishing = writer.written, True, writer.finishing
        self.wait()  # the previous save is written: its copy can be reused
        shared, per_rank = snapshot(shared, self._last[0]), snapshot(per_rank, self._last[1])
        self._last = (shared, per_rank)
        side, run_dir, keep_last, progress = self._side, self.run_dir, self.keep_last, self.progress

        def work() -> None:
            try:
                for finish in finishing:  # a strategy's files written in the background (DCP's async save)
                    finish()
                _write(path, side, shared, per_rank, info, written, made, progress)
                if side.is_rank0:
                    apply_retention(run_dir, keep_last, keep_step, current=path)
            except BaseException as exc:  # reported on the training thread
                self._error = exc

        self._thread = threading.Thread(target=work, name=f"checkpoint-{step}", daemon=True)
        self._thread.start()
        self.last_step = step
        return path

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            if isinstance(error, RuntimeError):  # a collective failed (a lost peer): dist_train.run explains those
                raise error
            raise TrainingFailed(f"saving a checkpoint failed: {type(error).__name__}: {error}") from error

    def load(self, info: CheckpointInfo, parts: CheckpointParts) -> bool:
        """Put a checkpoint every rank agreed on back into `parts`. Returns
        whether this rank's own parts were restored too: False when the
        checkpoint was saved by another number of workers (their per-rank state
        cannot be split or merged; the caller starts those afresh)."""
        for name, part in parts.shared.items():
            state = load_file(info.path, name)
            if name == "trainer.pt":
                state = _upgrade_trainer(state, info)
            if state is None:
                continue  # an optional file (best_model.pt) the run did not write
            if isinstance(part, dict):
                for key, p in part.items():
                    if key not in state and getattr(p, "checkpoint_optional", False):
                        continue  # a part added after this checkpoint was written
                    p.load_state_dict(state[key])
            else:
                part.load_state_dict(state)
        if parts.files is not None:
            parts.files.load_files(info.path)
        self.last_step = info.global_step
        mine = load_file(info.path, f"rank-{self.comm.rank:05d}.pt")
        if int(info.manifest.get("world_size", -1)) != self.comm.world_size or mine is None:
            return False
        for name, part in parts.per_rank.items():
            part.load_state_dict(mine[name])
        return True


def _upgrade_trainer(state: dict[str, Any] | None, info: CheckpointInfo) -> dict[str, Any] | None:
    """trainer.pt of format 1 (before named parts) in today's layout."""
    if state is None or info.manifest.get("format") != "dist-train-checkpoint/1":
        return state
    progress = state["progress"]
    return {"strategy": state["optimizer"], "schedule": state["schedule"], "early_stopping": state["early_stopping"],
            "state": {"epoch": progress["epoch"], "step_in_epoch": progress["step_in_epoch"],
                      "global_step": progress["global_step"], "last_val": state["last_val"],
                      "best_checkpoint": state["best_checkpoint"], "best_monitored": state["best_monitored"],
                      "last_logged_lr": state.get("last_logged_lr"), "world_size": state["world_size"],
                      "finished": state["finished"], "early_stopped": bool(info.manifest.get("early_stopped"))}}


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
