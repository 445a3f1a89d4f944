"""One job per run directory: the lock beside it, its holder named, a dead
holder's lock taken over (real processes holding real POSIX locks)."""

import errno
import fcntl
import os
import shutil
import subprocess
import sys

import pytest

from dist_train.run_lock import RunDirInUse, RunDirLock, lock_path
from tests.conftest import REPO

HOLD = """
import sys
from dist_train.run_lock import RunDirLock
lock = RunDirLock(sys.argv[1], "dist-train launch").acquire()
print("held", flush=True)
sys.stdin.read()  # until the test closes our input (or kills us)
"""


def holder(run_dir, prefix=()):
    """A process that takes the lock and keeps it; returns once it holds it."""
    proc = subprocess.Popen([*prefix, sys.executable, "-c", HOLD, str(run_dir)], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_held_run_directory_is_refused_naming_the_holder_and_taken_over_when_it_dies(tmp_path):
    run_dir = tmp_path / "runs" / "job"
    proc = holder(run_dir)
    try:
        with pytest.raises(RunDirInUse, match=rf"run directory {run_dir} is in use by dist-train launch \(pid "
                                              rf"{proc.pid} on \S+, since \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\); wait"):
            RunDirLock(run_dir).acquire()
        proc.kill()  # kill -9: the holder never cleans up
        proc.wait()
        assert lock_path(run_dir).exists()  # the stale file is still there...
        lock = RunDirLock(run_dir, "dist-train run").acquire()  # ...and is simply locked again
        assert '"command": "dist-train run"' in lock_path(run_dir).read_text()
        lock.release()
        assert not lock_path(run_dir).exists()
    finally:
        proc.kill()


def test_a_holder_on_another_host_is_named(tmp_path):
    """A second host on this machine: a process with a hostname of its own
    (a UTS namespace) holding the lock on the same file system."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare (util-linux) for a process with its own hostname")
    run_dir = tmp_path / "job"
    proc = holder(run_dir, ["unshare", "--uts", "sh", "-c", 'hostname dt-other-node && exec "$0" "$@"'])
    try:
        with pytest.raises(RunDirInUse, match="on dt-other-node, since"):
            RunDirLock(run_dir).acquire()
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    RunDirLock(run_dir).acquire().release()  # the holder ended normally: free again


def test_a_rejected_command_leaves_no_trace(tmp_path):
    run_dir = tmp_path / "a" / "b" / "run"
    lock = RunDirLock(run_dir).acquire()
    assert lock_path(run_dir).exists()
    lock.release_and_tidy()
    assert list(tmp_path.iterdir()) == []  # the directories made for the lock are gone too


def test_a_file_system_without_locks_falls_back_to_the_holder_line(tmp_path, monkeypatch):
    """No file system here refuses POSIX locks, so the refusal is simulated
    (fcntl.lockf raising ENOLCK, as Lustre without `flock` or NFS with `nolock`
    do); the holder line then decides."""
    run_dir = tmp_path / "run"

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "lockf", no_locks)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_path(run_dir).write_text(f'{{"host": "{os.uname().nodename}", "pid": {dead.pid}, "since": 0, '
                                  '"command": "dist-train launch"}\n')
    lock = RunDirLock(run_dir).acquire()  # a dead pid on this host: taken over
    assert f'"pid": {os.getpid()}' in lock_path(run_dir).read_text()
    with pytest.raises(RunDirInUse, match=f"pid {os.getpid()}"):  # a live holder here: refused
        RunDirLock(run_dir).acquire()
    lock.release()
    lock_path(run_dir).write_text('{"host": "elsewhere", "pid": 1, "since": 0, "command": "dist-train launch"}\n')
    with pytest.raises(RunDirInUse, match=r"on elsewhere.*does not support locks.*if that job is gone, delete "):
        RunDirLock(run_dir).acquire()
