"""What each worker runs under `dist-train launch ... script.py [ARG ...]`:
the script as `__main__` (it calls dist_train.fit), with a user's mistake
printed as one line instead of a traceback, and its exit status left for the
launcher."""

import runpy
import sys

from dist_train.comm import SharedError
from dist_train.errors import DistTrainError
from launcher.elastic import write_worker_status


def main() -> int:
    script, *args = sys.argv[1:]
    sys.argv = [script, *args]
    try:
        runpy.run_path(script, run_name="__main__")
    except SharedError as exc:  # another rank met the mistake and says it
        return exc.exit_code
    except DistTrainError as exc:
        print(f"dist-train: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    from dist_train.watchdog import on_exit

    on_exit(write_worker_status)  # a stall ends the process at once: its status is written first
    code = main()
    write_worker_status(code)
    raise SystemExit(code)
