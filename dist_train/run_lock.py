"""One job per run directory.

A job holds an exclusive POSIX lock (`fcntl.lockf`) on `.RUN_DIR_NAME.lock`
beside its run directory, for as long as it runs, with a line saying who holds
it (host, pid, since when, which command). The lock lives beside the
directory, not in it, so `--fresh` can move the old directory aside while the
lock stays held, and a rejected command leaves the directory untouched.

The kernel drops a POSIX lock when its holder dies, however it dies (kill -9
and out-of-memory included), so a dead job's lock is taken over by the next
one without any clean-up: the stale file is simply locked again and its line
rewritten. On a shared file system the lock is taken through the file
system's lock service, so a job on another node sees it too: NFSv4, NFSv3
with lockd (the default, not `nolock`), Lustre mounted with `flock`, GPFS,
BeeGFS and CephFS honour POSIX locks across nodes. Where the file system
refuses locks (ENOLCK, EOPNOTSUPP: Lustre without `flock`, NFS with `nolock`,
some FUSE file systems), the holder line alone decides: a line left by a pid
that no longer runs on this host is taken over; one from another host cannot
be checked from here, so the job is refused, naming the file to delete once
that job is known to be gone.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from dist_train.errors import DistTrainError

# errnos of a file system that does not do POSIX locks at all
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class RunDirInUse(DistTrainError):
    """Another job holds the run directory."""


def lock_path(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    return run_dir.parent / f".{run_dir.name}.lock"


class RunDirLock:
    """`acquire()` or RunDirInUse naming the holder; `release()` removes the file."""

    def __init__(self, run_dir: Path, command: str = "dist-train") -> None:
        self.run_dir, self.path, self.command = Path(run_dir), lock_path(run_dir), command
        self._fd: int | None = None
        self._made_parents: list[Path] = []

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "RunDirLock":
        self._make_parent()
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise DistTrainError(f"cannot create the lock file {self.path} of run.dir {self.run_dir} "
                                     f"({exc.strerror}); choose a run.dir in a directory you can write") from None
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EACCES, errno.EAGAIN):
                    raise self._in_use(self._holder()) from None
                if exc.errno in _NO_LOCKS:
                    return self._acquire_without_locks()
                raise DistTrainError(f"cannot lock {self.path} ({exc.strerror}); check that the directory of run.dir "
                                     "is writable") from None
            # A holder that released between our open and our lock may have
            # removed the file: then we locked a name that no longer exists.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._fd = fd
        self._write_holder()
        return self

    def _acquire_without_locks(self) -> "RunDirLock":
        holder = self._holder()
        if holder and not self._is_dead_here(holder):
            hint = (f"the file system of {self.path.parent} does not support locks, so a holder on another host cannot "
                    f"be checked; if that job is gone, delete {self.path}")
            raise self._in_use(holder, hint)
        self.path.unlink(missing_ok=True)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:  # another job was faster
            raise self._in_use(self._holder()) from None
        self._fd = fd
        self._write_holder()
        return self

    def release(self) -> None:
        """Remove the lock file (while still holding it), then let go."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None

    def release_and_tidy(self) -> None:
        """Release, and remove the parent directories `acquire` made (for a
        command rejected before it changed anything)."""
        self.release()
        for path in reversed(self._made_parents):
            try:
                path.rmdir()
            except OSError:
                break
        self._made_parents = []

    def __enter__(self) -> "RunDirLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    # ------------------------------------------------------------------

    def _make_parent(self) -> None:
        missing = []
        parent = self.path.parent
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        for path in reversed(missing):
            try:
                path.mkdir()
            except FileExistsError:
                continue
            except OSError as exc:
                raise DistTrainError(f"cannot create {path} for run.dir {self.run_dir} ({exc.strerror}); choose a "
                                     "run.dir in a directory you can write") from None
            self._made_parents.append(path)

    def _write_holder(self) -> None:
        line = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(),
                           "command": self.command})
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, (line + "\n").encode(), 0)

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text() or "null")
        except (OSError, ValueError):
            return None

    @staticmethod
    def _is_dead_here(holder: dict) -> bool:
        if holder.get("host") != socket.gethostname():
            return False
        try:
            os.kill(int(holder.get("pid", 0)), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError, TypeError):
            return False
        return False

    def _in_use(self, holder: dict | None, hint: str | None = None) -> RunDirInUse:
        who = "another job"
        if holder:
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("since", 0))))
            who = f"{holder.get('command', 'a job')} (pid {holder.get('pid')} on {holder.get('host')}, since {since})"
        hint = hint or "wait for it to end or stop it, or give this job its own run.dir"
        return RunDirInUse(f"run directory {self.run_dir} is in use by {who}; {hint}")
