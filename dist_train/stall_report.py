"""What a stalled job leaves and says: one report per rank and one summary,
in RUN_DIR/hang/ (see dist_train.watchdog for when they are written).

rank-N.txt is for people (every thread's stack, the collective each is
inside), rank-N.json the same for the summary. The summary names, for each
rank, what it was doing, the collective it waits in (its group and sequence
number) and where it is stuck: the innermost frame of your code, else of
ours, as file:line. Then the verdict: the ranks missing from a collective
others wait in, ranks in different collectives (they diverged), ranks that
stopped answering (no report, no roll call: a process stopped or dead, a
host or network down)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from dist_train.collective_check import MARK
from dist_train.frames import whose

REPORT_WAIT_S = 5.0  # how long the ranks that answered the roll call get to write their reports

def hang_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "hang"


def _frames(frame: Any) -> list[dict[str, Any]]:
    return [{"file": f.filename, "line": f.lineno, "function": f.name, "code": (f.line or "").strip(),
             "whose": whose(f.filename)} for f in traceback.extract_stack(frame)]


def _tb_frames(error: BaseException) -> list[dict[str, Any]]:
    return [{"file": f.filename, "line": f.lineno, "function": f.name, "code": (f.line or "").strip(),
             "whose": whose(f.filename)} for f in traceback.extract_tb(error.__traceback__)]


def inferred_collective(frames: list[dict[str, Any]], strategy: str, world_size: int) -> str | None:
    """The collective a stack waits in when our communicator did not mark it:
    torch.distributed called directly, or the gradient reduction in backward."""
    for f in reversed(frames):
        if f["file"].endswith(os.path.join("distributed", "distributed_c10d.py")):
            return f"torch.distributed.{f['function']}"
    if world_size > 1 and any(f["function"] in ("_backward", "backward") and f["whose"] in ("ours", "torch")
                              for f in frames):
        return {"ddp": "DDP's gradient all-reduce (in the backward pass)",
                "deepspeed": "DeepSpeed's gradient reduction (in the backward pass)"}.get(strategy)
    return None


# the collectives' and the reports' own code: never the place to look at
MACHINERY = ("collective_check.py", "watchdog.py", "stall_report.py", "comm.py")


def where(frames: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The innermost frame of your code or ours (not torch's, not Python's):
    where this thread is, in terms a user can act on."""
    for f in reversed(frames):
        if f["whose"] in ("yours", "ours") and not f["file"].endswith(MACHINERY):
            return f
    return frames[-1] if frames else None


def at(frame: dict[str, Any] | None) -> str:
    if frame is None:
        return "an unknown place"
    who = {"yours": "your code", "ours": "dist-train"}.get(frame["whose"], frame["whose"])
    code = f": {frame['code']}" if frame["code"] else ""
    return f"{who} at {frame['file']}:{frame['line']} in {frame['function']}{code}"


def describe_rank(watchdog: Any, idle: float, bound: float, why: str, announced_by: str | None,
                  error: BaseException | None) -> dict[str, Any]:
    """This rank's report: what it was doing and every thread's stack and collective."""
    from dist_train.comm import INSIDE, TorchComm

    env = watchdog.env
    names = {t.ident: t.name for t in threading.enumerate()}
    threads = []
    own = threading.get_ident()
    main_ident = threading.main_thread().ident
    for ident, frame in sys._current_frames().items():
        if ident == own and ident != main_ident:
            continue  # the watchdog's own thread
        frames = _frames(frame)
        inside = INSIDE.get(ident)
        collective = (f"{inside['op']}{' of ' + inside['shapes'] if inside['shapes'] else ''} on {inside['group']}"
                      + (f" (its collective #{inside['seq'] + 1})" if inside.get("seq") is not None else "")
                      if inside else inferred_collective(frames, watchdog.strategy, env.world_size))
        threads.append({"name": names.get(ident, str(ident)), "main": ident == main_ident,
                        "collective": collective, "inside": inside, "frames": frames, "where": where(frames)})
    threads.sort(key=lambda t: (not t["main"], t["name"]))
    if error is not None:  # where the main thread met the error is where it was
        frames = _tb_frames(error)
        main = next((t for t in threads if t["main"]), None)
        if main is not None:
            main.update(frames=frames, where=where(frames), collective=inferred_collective(
                frames, watchdog.strategy, env.world_size) or main["collective"])
    seq = TorchComm(env).sequence_number() if env.world_size > 1 else None
    return {"rank": env.rank, "world_size": env.world_size, "host": socket.gethostname(), "pid": os.getpid(),
            "phase": watchdog.phase, "step": watchdog.step, "idle_s": round(idle, 3), "bound_s": bound,
            "bound_from": why, "announced_by": announced_by, "started_collectives": seq, "threads": threads,
            "error": None if error is None else str(error).strip().splitlines()[0][:2000],
            "time": time.time()}


def dump_nccl_trace(run_dir: Path, rank: int) -> str | None:
    """NCCL's flight recorder (the last collectives this rank issued, and their
    state), written to hang/nccl-trace-rank-N.pkl; None where torch has none.
    Read it with `python -m torch.distributed.flight_recorder.fr_trace`.
    Recorded only with TORCH_FR_BUFFER_SIZE set (the launcher sets it)."""
    dump = getattr(torch._C._distributed_c10d, "_dump_nccl_trace", None)
    if dump is None:
        return None
    try:
        data = dump()
        path = hang_dir(run_dir) / f"nccl-trace-rank-{rank}.pkl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return str(path)
    except Exception as exc:  # noqa: BLE001 - a trace is a bonus; the report goes on without it
        return f"(no trace: {type(exc).__name__}: {exc})"


def doing(report: dict[str, Any]) -> str:
    phase, step = report["phase"], report["step"]
    if phase == "training":
        return f"training step {step + 1}"
    return f"{phase} (after step {step})" if phase != "starting" else "starting (before the first steps)"


def write_report(run_dir: Path, report: dict[str, Any]) -> Path:
    from dist_train.atomic import write_atomic

    directory = hang_dir(run_dir)
    directory.mkdir(parents=True, exist_ok=True)
    write_atomic(directory / f"rank-{report['rank']}.json", json.dumps(report, indent=1) + "\n")
    path = directory / f"rank-{report['rank']}.txt"
    write_atomic(path, _text(report))
    return path


def _text(report: dict[str, Any]) -> str:
    lines = [f"dist-train stall report: rank {report['rank']} of {report['world_size']}, pid {report['pid']} on "
             f"{report['host']}, {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(report['time']))}",
             f"doing: {doing(report)}; no progress for {report['idle_s']:.1f} s (bound {report['bound_s']:g} s: "
             f"{report['bound_from']})"]
    if report["error"]:
        lines.append(f"error: {report['error']}")
    if report["announced_by"] is not None:
        lines.append(f"rank {report['announced_by']} announced the stall first")
    if report["started_collectives"] is not None:
        lines.append(f"collectives started on the job's group: {report['started_collectives']}")
    if report.get("nccl_trace"):
        lines.append(f"NCCL's flight recorder: {report['nccl_trace']}")
    for t in report["threads"]:
        lines.append("")
        lines.append(f"thread {t['name']}{' (main)' if t['main'] else ''}: "
                     f"{'in ' + t['collective'] if t['collective'] else 'not in a collective'}")
        for f in t["frames"]:
            lines.append(f"  File \"{f['file']}\", line {f['line']}, in {f['function']}")
            if f["code"]:
                lines.append(f"    {f['code']}")
    return "\n".join(lines) + "\n"


def read_reports(run_dir: Path) -> dict[int, dict[str, Any]]:
    found = {}
    for path in hang_dir(run_dir).glob("rank-*.json"):
        try:
            report = json.loads(path.read_text())
            found[int(report["rank"])] = report
        except (ValueError, KeyError, OSError):
            continue
    return found


def wait_for_reports(run_dir: Path, world_size: int, missing: list[int] | None) -> dict[int, dict[str, Any]]:
    """The reports of every rank that answered the roll call (all ranks but the
    missing; every rank when the store could not be reached), waited for up
    to REPORT_WAIT_S."""
    expected = set(range(world_size)) - set(missing or [])
    deadline = time.monotonic() + REPORT_WAIT_S
    while True:
        found = read_reports(run_dir)
        if expected <= set(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def _process_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "its process has ended"
    state = stat[stat.rfind(")") + 2:].split()[0]
    return {"T": "its process is stopped (SIGSTOP, or a debugger)", "t": "its process is stopped by a debugger",
            "D": "its process is in an uninterruptible wait (a stuck file system or device)",
            "Z": "its process has ended"}.get(state)


def _missing_line(rank: int, peers: Any, env: Any, reports: dict[int, Any]) -> str:
    host = peers.hosts[rank] if peers is not None else "?"
    pid = peers.pids[rank] if peers is not None and peers.pids else None
    why = "no roll call within a few seconds"
    if rank in reports:
        why = "it wrote a report but did not answer the roll call: the network between it and the job's store is cut"
    elif pid is not None and peers is not None and peers.hosts[rank] == peers.hosts[env.rank]:
        why = _process_state(pid) or "no report and no roll call: it cannot run, or cannot reach the job's store"
    else:
        why = "no report and no roll call: its process is stopped or dead, or its host or network is down"
    return f"rank {rank} on {host}{f' (pid {pid})' if pid else ''} stopped answering: {why}"


def end_stopped_peers(missing: list[int] | None, peers: Any, env: Any) -> str:
    """SIGKILL the missing ranks on this host whose process is stopped (state T):
    they cannot take a signal to end by themselves, and torch's agent would
    wait 30 s before it kills them. Returns what was done, for the summary."""
    import signal

    ended = []
    for rank in missing or []:
        if peers is None or not peers.pids or peers.hosts[rank] != peers.hosts[env.rank]:
            continue
        pid = peers.pids[rank]
        if (_process_state(pid) or "").startswith("its process is stopped (SIGSTOP"):
            try:
                os.kill(pid, signal.SIGKILL)
                ended.append(f"rank {rank} (pid {pid})")
            except OSError:
                pass
    return ", ".join(ended)


def rank_line(report: dict[str, Any], missing: list[int] | None, peers: Any, run_dir: Path) -> str:
    """The one line every reporting rank prints."""
    rank = report["rank"]
    what = "the ranks called different collectives" if report["error"] else f"no progress for {report['idle_s']:.0f} s"
    line = f"dist-train: rank {rank}: {what} in {doing(report)}"
    if missing is None:
        line += "; cannot reach the job's store (its host or the network to it is down)"
    elif missing:
        line += f"; {peers.describe(missing)} stopped answering"
    return line + f"; its stacks: {hang_dir(run_dir)}/rank-{rank}.txt"


def stuck_thread(report: dict[str, Any]) -> dict[str, Any] | None:
    """The thread a rank's progress waits on: the main thread, unless it waits
    for a checkpoint save, whose writer thread then is the one."""
    main = next((t for t in report["threads"] if t["main"]), None)
    if main is None or main["collective"]:
        return main
    waits_for_save = any(f["function"] == "wait" and f["file"].endswith("checkpoint.py") for f in main["frames"])
    writer = next((t for t in report["threads"] if t["name"].startswith("checkpoint-")), None)
    return writer if waits_for_save and writer is not None else main


def _collective_key(thread: dict[str, Any]) -> tuple | None:
    inside = thread.get("inside")
    if inside:
        return (inside["group"], inside["op"], inside["shapes"], inside.get("seq"))
    return (thread["collective"],) if thread["collective"] else None


def summarize(reports: dict[int, dict[str, Any]], missing: list[int] | None, peers: Any, env: Any,
              run_dir: Path) -> str:
    """The summary the lowest reporting rank prints and writes."""
    world = env.world_size
    first = next(iter(reports.values()), None)
    diverged = any(r["error"] for r in reports.values())
    if diverged:
        error = next(r["error"] for r in reports.values() if r["error"])
        calls = error.split(f"{MARK}: ", 1)[-1].split("; ")
        title = "\n".join(["dist-train: the ranks diverged: they called different collectives (dist.check_collectives):",
                           *(f"  {c}" for c in calls)])
    elif first is not None:
        slowest = max(r["idle_s"] for r in reports.values())
        title = (f"dist-train: the job stalled: no progress for {slowest:.0f} s (bound {first['bound_s']:g} s: "
                 f"{first['bound_from']})")
    else:
        title = "dist-train: the job stalled"
    lines = [title]
    waiting: dict[tuple, list[int]] = {}
    free: list[int] = []
    for rank in range(world):
        report = reports.get(rank)
        if report is None:
            continue
        main = next((t for t in report["threads"] if t["main"]), None)
        stuck = stuck_thread(report)
        shown = [t for t in report["threads"] if t is main or t is stuck or t["collective"]]
        described = []
        for t in shown:
            what = f"in {t['collective']}" if t["collective"] else "not in a collective"
            described.append(f"{'' if t['main'] else 'thread ' + t['name'] + ': '}{what}, {at(t['where'])}")
        seq = report["started_collectives"]
        counted = f" ({seq} collectives started)" if seq is not None else ""
        lines.append(f"  rank {rank} ({report['host']}, pid {report['pid']}): {doing(report)}{counted}")
        lines += [f"      {d}" for d in described]
        key = _collective_key(stuck) if stuck else None
        if key is None:
            free.append(rank)
        else:
            waiting.setdefault(key, []).append(rank)
    started = {rank: r["started_collectives"] for rank, r in reports.items() if r["started_collectives"] is not None}
    gone = sorted(missing) if missing is not None else sorted(set(range(world)) - set(reports))
    for rank in gone:
        lines.append(f"  {_missing_line(rank, peers, env, reports)}")
    if missing is None:
        lines.append("  the job's store could not be reached from here: its host or the network to it is down")
    lines += ["", *_verdict(reports, waiting, free, gone, started)]
    lines.append(f"  every thread's stack: {hang_dir(run_dir)}/rank-N.txt; this summary: "
                 f"{hang_dir(run_dir) / 'summary.txt'}")
    lines.append(f"  {_newest_checkpoint(run_dir)}; the job stops with exit status 3 (a restart with --max-restarts, "
                 f"or running the same command, resumes there)")
    return "\n".join(lines)


def _ranks(ranks: list[int]) -> str:
    return f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}"


def _name(key: tuple) -> str:
    if len(key) == 1:
        return key[0]
    group, op, shapes = key[:3]
    return f"{op}{' of ' + shapes if shapes else ''} on {group}"


def _verdict(reports: dict[int, Any], waiting: dict[tuple, list[int]], free: list[int], gone: list[int],
             started: dict[int, int]) -> list[str]:
    found = []
    if any(r["error"] for r in reports.values()):
        found.append("  verdict: each rank above called the collective shown at the place shown; make every rank "
                     "call the same collectives in the same order (a collective under `if rank == 0`, or a branch "
                     "only some ranks take, is the usual cause)")
        return found
    if gone:
        found.append(f"  verdict: {_ranks(gone)} stopped answering while the others waited for "
                     f"{'them' if len(gone) > 1 else 'it'}")
    counts = ""
    if len(set(started.values())) > 1:
        counts = " (collectives started: " + ", ".join(f"rank {r} {n}" for r, n in sorted(started.items())) + ")"
    if len(waiting) > 1:
        parts = "; ".join(f"{_ranks(ranks)} in {_name(key)}" for key, ranks in waiting.items())
        found.append(f"  verdict: the ranks wait in different collectives, so they diverged: {parts}{counts}. One "
                     f"of them took a path the others did not (see the places above)")
    elif waiting and free:
        (key, ranks), = waiting.items()
        places = "; ".join(f"rank {r} at {_place(reports[r])}" for r in free)
        found.append(f"  verdict: {_ranks(free)} {'are' if len(free) > 1 else 'is'} missing from {_name(key)}, "
                     f"where {_ranks(ranks)} wait{'s' if len(ranks) == 1 else ''}{counts}: look at {places}")
    elif waiting and not gone:
        found.append(f"  verdict: every rank waits in the same collective, which never completes{counts}: the "
                     "network or the communication backend is at fault, not your code")
    elif free and not waiting:
        found.append("  verdict: no rank is in a collective: every rank is stuck where shown above (a data read, "
                     "a file system, your code)")
    return found or ["  verdict: see the places above"]


def _place(report: dict[str, Any]) -> str:
    thread = stuck_thread(report)
    frame = thread["where"] if thread else None
    return f"{frame['file']}:{frame['line']} ({frame['function']})" if frame else "an unknown place"


def _newest_checkpoint(run_dir: Path) -> str:
    from dist_train.checkpoint import MANIFEST, list_checkpoints

    for path in list_checkpoints(run_dir):
        if (path / MANIFEST).is_file():
            return f"the newest complete checkpoint is {path}"
    return "there is no complete checkpoint yet"


def write_summary(run_dir: Path, summary: str) -> None:
    from dist_train.atomic import write_atomic

    hang_dir(run_dir).mkdir(parents=True, exist_ok=True)
    write_atomic(hang_dir(run_dir) / "summary.txt", summary + "\n")


def archive(run_dir: Path) -> Path | None:
    """A new start of the run moves an earlier stall's reports aside (into
    hang/previous-<time>/), so the reports in hang/ are always one stall's."""
    directory = hang_dir(run_dir)
    files = [p for p in directory.glob("*") if p.is_file()] if directory.is_dir() else []
    if not files:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(max(p.stat().st_mtime for p in files)))
    aside = directory / f"previous-{stamp}"
    aside.mkdir(exist_ok=True)
    for path in files:
        shutil.move(str(path), aside / path.name)
    return aside
