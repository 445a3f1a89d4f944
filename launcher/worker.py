"""What each worker process runs under `dist-train launch` (torchrun -m launcher.worker)."""

import sys

from launcher.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["run", *sys.argv[1:]]))
