"""The stall watchdog's bound and what its summary says, from reports built
by hand; one small process that really stalls, reports and exits 3."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from dist_train.config import DistConfig
from dist_train.env import DistEnv
from dist_train.frames import whose
from dist_train.stall_report import summarize, where
from dist_train.watchdog import Watchdog
from tests.conftest import REPO


def watchdog(tmp_path, **dist):
    return Watchdog(DistConfig(**dist), False, DistEnv(), tmp_path)


def test_the_bound_is_the_start_ups_then_derived_from_the_slowest_progress(tmp_path):
    w = watchdog(tmp_path, start_timeout_s=100, timeout_s=120, hang_timeout_s=0)  # thread off: bound() by hand
    assert w.bound()[0] == 90  # until the first steps are done: 90% of the start-up timeout
    w.explicit = None
    w.warm = True
    w.slowest = 0.01
    assert w.bound()[0] == 30  # 20 x 10 ms, raised to the floor
    w.slowest = 2.0
    assert w.bound()[0] == 40  # 20 x the slowest unit
    w.slowest = 10.0
    assert w.bound()[0] == 60  # at most half of dist.timeout_s: the watchdog speaks before a collective gives up
    w.explicit = 7
    assert w.bound() == (7, "dist.hang_timeout_s")
    compiled = Watchdog(DistConfig(hang_timeout_s=0, timeout_s=1000), True, DistEnv(), tmp_path)
    compiled.explicit, compiled.warm = None, True
    assert compiled.bound()[0] == 300  # recompiles for a new shape take minutes on a CPU


def test_the_hang_timeout_must_be_below_the_collective_timeout():
    from dist_train.config import load_config
    from dist_train.errors import ConfigError

    with pytest.raises(ConfigError, match=r"dist.hang_timeout_s.*not below dist.timeout_s=120"):
        load_config(None, ["dist.hang_timeout_s=120"])


def frame(file, line, function, code=""):
    return {"file": file, "line": line, "function": function, "code": code, "whose": whose(file)}


def thread(frames, collective=None, inside=None, main=True, name="MainThread"):
    return {"name": name, "main": main, "collective": collective, "inside": inside, "frames": frames,
            "where": where(frames)}


def report(rank, threads, started, phase="training", error=None):
    return {"rank": rank, "world_size": 2, "host": "node-a", "pid": 100 + rank, "phase": phase, "step": 30,
            "idle_s": 5.1, "bound_s": 5, "bound_from": "dist.hang_timeout_s", "announced_by": None,
            "started_collectives": started, "threads": threads, "error": error, "time": 0.0}


USER = "/home/me/project/nets.py"
OURS = f"{REPO}/dist_train/strategy/base.py"
TORCH = f"{sys.modules['torch'].__path__[0]}/_tensor.py" if "torch" in sys.modules else "/x/torch/_tensor.py"


def test_where_points_at_the_innermost_frame_of_your_code_or_ours():
    frames = [frame(f"{REPO}/dist_train/trainer.py", 170, "train_step"), frame(USER, 22, "forward", "time.sleep(9)"),
              frame(f"{REPO}/dist_train/comm.py", 120, "all_reduce_sum")]
    assert whose(USER) == "yours" and whose(OURS) == "ours"
    assert where(frames)["file"] == USER  # comm.py is the collectives' machinery, not a place to look at


def test_a_rank_missing_from_the_collective_the_others_wait_in_is_named_with_its_line(tmp_path):
    waiting = thread([frame(OURS, 88, "_backward", "loss.backward()")],
                     collective="DDP's gradient all-reduce (in the backward pass)")
    asleep = thread([frame(OURS, 66, "micro_batch"), frame(USER, 22, "forward", "time.sleep(600)")])
    text = summarize({0: report(0, [waiting], 44), 1: report(1, [asleep], 43)}, [], None, DistEnv(world_size=2),
                     tmp_path)
    assert "dist-train: the job stalled: no progress for 5 s" in text
    assert ("verdict: rank 1 is missing from DDP's gradient all-reduce (in the backward pass), where rank 0 waits "
            "(collectives started: rank 0 44, rank 1 43): look at rank 1 at /home/me/project/nets.py:22") in text
    assert "your code at /home/me/project/nets.py:22 in forward: time.sleep(600)" in text


def test_ranks_in_different_collectives_are_named_as_diverged(tmp_path):
    a = thread([frame(f"{REPO}/dist_train/metrics.py", 67, "reduce_sums")], collective="x",
               inside={"group": "the job's group", "op": "all_reduce (sum)", "shapes": "float64[3]", "seq": 32})
    b = thread([frame(f"{REPO}/dist_train/metrics.py", 150, "mean")], collective="y",
               inside={"group": "the job's group", "op": "all_reduce (sum)", "shapes": "float64[2]", "seq": 32})
    text = summarize({0: report(0, [a], 33), 1: report(1, [b], 33)}, [], None, DistEnv(world_size=2), tmp_path)
    assert ("the ranks wait in different collectives, so they diverged: rank 0 in all_reduce (sum) of float64[3] on "
            "the job's group; rank 1 in all_reduce (sum) of float64[2] on the job's group") in text


def test_a_rank_that_stopped_answering_is_named_with_its_host(tmp_path):
    class Peers:
        hosts = ("node-a (10.0.0.1)", "node-b (10.0.0.2)")
        pids = (100, 101)

    waiting = thread([frame(OURS, 88, "_backward")], collective="DDP's gradient all-reduce (in the backward pass)")
    text = summarize({0: report(0, [waiting], 44)}, [1], Peers(), DistEnv(world_size=2), tmp_path)
    assert "rank 1 on node-b (10.0.0.2) (pid 101) stopped answering: no report and no roll call" in text
    assert "verdict: rank 1 stopped answering while the others waited for it" in text


def test_a_process_that_stalls_writes_its_report_and_summary_and_exits_3(tmp_path):
    """One process (no peers): the watchdog's thread finds no progress for 0.5 s."""
    code = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from dist_train.config import DistConfig
        from dist_train.env import DistEnv
        from dist_train.watchdog import Watchdog

        def read_forever():
            time.sleep(60)  # a data read that never returns

        w = Watchdog(DistConfig(hang_timeout_s=0.5, timeout_s=10), False, DistEnv(), Path({str(tmp_path)!r}))
        w.warmed_up()
        w.phase, w.step = "training", 7
        w.beat()
        read_forever()
    """)
    (tmp_path / "stalling.py").write_text(code)
    proc = subprocess.run([sys.executable, str(tmp_path / "stalling.py")], capture_output=True, text=True, timeout=60,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": REPO})
    assert proc.returncode == 3, proc.stderr
    assert "dist-train: rank 0: no progress for 1 s in training step 8" in proc.stderr
    summary = (tmp_path / "hang" / "summary.txt").read_text()
    assert "no rank is in a collective" in summary
    line = code.splitlines().index("    time.sleep(60)  # a data read that never returns") + 1
    assert f"your code at {tmp_path / 'stalling.py'}:{line} in read_forever: time.sleep(60)" in summary
    saved = json.loads((tmp_path / "hang" / "rank-0.json").read_text())
    assert saved["phase"] == "training" and saved["bound_s"] == 0.5
    assert "time.sleep(60)  # a data read that never returns" in (tmp_path / "hang" / "rank-0.txt").read_text()


def test_a_store_that_goes_silent_during_the_looks_at_it_does_not_keep_the_watchdog_quiet(tmp_path):
    """torch's TCPStore client waits for ever on a connection whose other end went
    silent (a cut link, a stopped host: here the store's process stopped with
    SIGSTOP after the watchdog connected); the watchdog's looks at the store are
    bounded, so it still fires at its own bound."""
    import signal
    import threading
    import time

    from dist_train.distributed import Peers
    from tests.multiproc import free_port

    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import datetime, time
        import torch.distributed as dist
        store = dist.TCPStore("127.0.0.1", {port}, is_master=True, wait_for_workers=False,
                              timeout=datetime.timedelta(seconds=60))
        print("ready", flush=True)
        time.sleep(300)""")], stdout=subprocess.PIPE, text=True)
    fired = threading.Event()

    class Recorded(Watchdog):
        def fire(self, idle=None, announced_by=None, error=None):  # instead of reporting and ending the process
            fired.set()

    try:
        assert server.stdout.readline().strip() == "ready"
        env = DistEnv(rank=1, world_size=2, master_port=port)
        start = time.monotonic()
        w = Recorded(DistConfig(hang_timeout_s=3, start_timeout_s=5, timeout_s=60), False, env, tmp_path,
                     Peers(env, ("a (127.0.0.1)", "b (127.0.0.1)"), "test"))
        deadline = start + 20
        while w._store_client is None:  # the watchdog has looked at the store once, and keeps its connection
            assert time.monotonic() < deadline and not fired.is_set()
            time.sleep(0.05)
        os.kill(server.pid, signal.SIGSTOP)
        assert fired.wait(30), "the watchdog never fired: its look at the silent store still waits"
        # its bound (90% of the start-up timeout: 4.5 s) plus at most one bounded look
        assert time.monotonic() - start < 4.5 + 7 + 3
        w.stop()
    finally:
        server.kill()
        os.kill(server.pid, signal.SIGCONT) if server.poll() is None else None
        server.wait()
