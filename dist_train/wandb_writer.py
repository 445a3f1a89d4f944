"""The process that owns a job's W&B run (started by `tracking.WandbSink` on
rank 0; `python -m dist_train.wandb_writer`).

W&B's client costs the caller about 0.3-1 ms per row: each `Run.log` waits on
a round trip through W&B's own thread and socket. Run in the training process,
that is a few percent of a small model's step time. Here it costs training one
write to a pipe. This process reads JSON lines from stdin:

    {"init": {...wandb.init arguments...}}        first line
    {"log": {...record...}, "step": N}             a history row, and with
        "console": "a log line"                    its line for the run's Logs tab
    {"finish": EXIT_CODE}                          last line

End of input without "finish" means the trainer died: the run is finished
with exit code 1, so what arrived is kept. Signals meant for the job
(Ctrl-C, SLURM's TERM and USR1) are ignored here: the trainer decides when
the run ends, and this process drains every row before it exits.

W&B never stops training: a failure is reported once on stderr, and the rest
of the input is read and dropped. `WANDB_INIT_TIMEOUT` (seconds, default 60)
bounds the wait for W&B to start."""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

#: exit status after a W&B failure that was already reported (the trainer stays quiet)
EXIT_REPORTED = 3


def warn(message: str) -> None:
    print(f"dist-train: warning: {message}", file=sys.stderr, flush=True)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:300]}"


def _start(init: dict[str, Any]) -> Any:
    import wandb

    timeout = float(os.environ.get("WANDB_INIT_TIMEOUT", 60))
    settings = wandb.Settings(init_timeout=timeout, silent=True, console="wrap", reinit="create_new")
    return wandb.init(**init, resume="allow", settings=settings)


def serve(lines: Any) -> int:
    """Returns 0, or EXIT_REPORTED after a failure it has reported."""
    first = next(lines, None)
    if first is None:
        return 0
    try:
        run = _start(json.loads(first)["init"])
    except Exception as exc:  # W&B must never stop training
        warn(f"W&B could not start ({_describe(exc)}); training goes on with local logging (metrics.jsonl)")
        run = None
    failed = run is None
    exit_code = 1  # input ended without a "finish": the trainer is gone
    # "finish" ends the loop, not the end of input: processes forked by the
    # trainer (data loader workers) may hold the pipe open a while longer
    for line in lines:
        message = json.loads(line)
        if "finish" in message:
            exit_code = int(message["finish"])
            break
        if failed:
            continue
        try:
            if "log" in message:
                record = message["log"]
                run.log(record, step=message["step"])
                for key, value in record.items():
                    if key.startswith("best_"):
                        run.summary[key] = value
            if "console" in message:
                print(message["console"], flush=True)  # W&B's console capture takes it to the run
        except Exception as exc:
            warn(f"W&B stopped accepting data ({_describe(exc)}); training goes on with local logging")
            failed = True
    if run is None:
        return EXIT_REPORTED
    try:
        run.finish(exit_code=exit_code)
    except Exception as exc:
        warn(f"W&B did not finish cleanly ({_describe(exc)})")
        return EXIT_REPORTED
    return EXIT_REPORTED if failed else 0


#: how much lower than the trainer this process (and W&B's own, its child) runs
NICENESS = 10


def main() -> int:
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    # Rows wait in the pipe for as long as it takes; training must not wait for
    # W&B's CPU time. With as many workers as cores, W&B at the same priority
    # takes a core from a worker mid-step, and every other rank then waits for
    # that one at the next all-reduce.
    try:
        os.nice(NICENESS)
    except OSError:
        pass
    return serve(iter(sys.stdin.buffer.readline, b""))


if __name__ == "__main__":
    sys.exit(main())
