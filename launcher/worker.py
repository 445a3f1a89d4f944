"""What each worker process runs under `dist-train launch CONFIG`
(`torchrun ... -m launcher.worker --job FILE`): the library's run, with what
the launcher already loaded, checked and planned (dist_train.job_decision),
a user's mistake said in one line."""

import os
import sys
from pathlib import Path

from dist_train.comm import SharedError
from dist_train.errors import DistTrainError
from dist_train.job_decision import JobDecision
from dist_train.run import run
from dist_train.run_lock import lock_path
from dist_train.watchdog import on_exit
from dist_train.worker_env import worker_env
from launcher.elastic import write_worker_status


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "--job":
        print("launcher.worker is started by `dist-train launch` (usage: -m launcher.worker --job FILE)",
              file=sys.stderr)
        return 2
    try:
        # a worker torch's agent started again (--max-restarts) plans afresh: checkpoints were written since
        restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
        decided = JobDecision.read(Path(argv[1]), restarted)
        cfg = decided.config
        held = decided.lock is not None and decided.lock == str(lock_path(Path(cfg.run.dir)).resolve())
        return run(cfg, worker_env(cfg), take_lock=not held, announce_stop=False, decided=decided)
    except SharedError as exc:  # another rank met the mistake and says it: one message for the job
        return exc.exit_code
    except DistTrainError as exc:
        print(f"dist-train: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code


if __name__ == "__main__":
    on_exit(write_worker_status)  # a stall ends the process at once: its status is written first
    code = main(sys.argv[1:])
    write_worker_status(code)
    raise SystemExit(code)
