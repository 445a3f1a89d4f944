"""What each worker process runs under `dist-train launch` (torchrun -m launcher.worker)."""

import sys

from dist_train.watchdog import on_exit
from launcher.cli import run_worker
from launcher.elastic import write_worker_status

if __name__ == "__main__":
    on_exit(write_worker_status)  # a stall ends the process at once: its status is written first
    code = run_worker(sys.argv[1:])
    write_worker_status(code)
    raise SystemExit(code)
