"""The `dist-train` command line.

Exit status: 0 done, 1 training failed, 2 a usage or config mistake."""

from __future__ import annotations

import argparse
import sys

from dist_train.errors import DistTrainError

OVERRIDES_HELP = "config overrides as dotted key=value, e.g. optim.lr=0.01 train.epochs=5 model.hidden_sizes=[128,64]"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dist-train",
        description="Data-parallel training of feed-forward networks on CPUs or GPUs, one process or many.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p_run = sub.add_parser(
        "run", help="train in this process (plain python, under torchrun or under srun)",
        description="Train in this process. Rank and world size come from torch's environment "
                    "(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) when a launcher sets them; "
                    "otherwise this is a single worker.",
    )
    p_run.add_argument("config", metavar="CONFIG", help="YAML run config, e.g. configs/quickstart.yaml")
    p_run.add_argument("overrides", metavar="KEY=VALUE", nargs="*", help=OVERRIDES_HELP)

    from launcher.elastic import add_launch_arguments

    p_launch = sub.add_parser(
        "launch", help="start N workers per node through torch's elastic launcher",
        description="Start workers through torch.distributed.run (torchrun). One node: "
                    "`dist-train launch --nproc-per-node 2 CONFIG`. Several nodes: the same command on "
                    "each node with --nnodes N --rdzv-endpoint HOST:PORT --rdzv-id JOB.",
    )
    add_launch_arguments(p_launch)
    p_launch.add_argument("config", metavar="CONFIG", help="YAML run config")
    p_launch.add_argument("overrides", metavar="KEY=VALUE", nargs="*", help=OVERRIDES_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "launch":
            return cmd_launch(args)
    except DistTrainError as exc:
        print(f"dist-train: error: {exc}", file=sys.stderr, flush=True)
        return 2
    raise AssertionError(args.command)


def cmd_run(args: argparse.Namespace) -> int:
    from dist_train.config import load_config
    from dist_train.env import DistEnv
    from dist_train.runner import run

    cfg = load_config(args.config, args.overrides)
    env = DistEnv.from_env(device=cfg.dist.device)
    run(cfg, env)
    return 0


def cmd_launch(args: argparse.Namespace) -> int:
    from dist_train.config import load_config
    from dist_train.resolve import resolve
    from launcher.elastic import launch, planned_world_size

    # Check the config once here, so a mistake is one clear message instead of
    # one traceback per worker.
    cfg = load_config(args.config, args.overrides)
    world_size = planned_world_size(args)
    if world_size is not None:
        resolve(cfg, world_size)
    return launch(args, args.config, args.overrides)


if __name__ == "__main__":
    sys.exit(main())
