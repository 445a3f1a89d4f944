"""What each worker process runs under `dist-train launch` (torchrun -m launcher.worker)."""

import sys

from launcher.cli import run_worker
from launcher.elastic import write_worker_status

if __name__ == "__main__":
    code = run_worker(sys.argv[1:])
    write_worker_status(code)
    raise SystemExit(code)
