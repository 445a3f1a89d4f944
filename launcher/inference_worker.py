"""What each worker runs under `dist-train predict|evaluate --nproc-per-node N`
(torchrun -m launcher.inference_worker predict|evaluate ARG ...): the same
command, this worker's share of the samples. A mistake is printed once, by
the rank that met it first; every worker exits with its status."""

import sys

from dist_train.comm import SharedError
from dist_train.errors import DistTrainError
from launcher.cli import build_parser
from launcher.elastic import write_worker_status


def main(argv: list[str]) -> int:
    from launcher.tools.inference import run_evaluate, run_predict

    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return (run_predict if args.command == "predict" else run_evaluate)(args, in_worker=True)
    except SharedError as exc:  # another rank says it
        return exc.exit_code
    except DistTrainError as exc:
        print(f"dist-train: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code


if __name__ == "__main__":
    code = main(sys.argv[1:])
    write_worker_status(code)
    raise SystemExit(code)
