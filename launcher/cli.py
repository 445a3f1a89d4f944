"""The `dist-train` command line.

Exit status: 0 done, 1 training failed, 2 a usage or config mistake, 75 stopped
on request (SIGTERM/SIGUSR1) after saving a checkpoint: run again to resume."""

from __future__ import annotations

import argparse
import sys

from dist_train.errors import DistTrainError

OVERRIDES_HELP = "config overrides as dotted key=value, e.g. optim.lr=0.01 train.epochs=5 model.hidden_sizes=[128,64]"


def add_resume_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--fresh", action="store_true",
                   help="start from scratch even if run.dir holds checkpoints (the earlier run is moved aside)")
    g.add_argument("--resume", metavar="CHECKPOINT", default=None,
                   help="resume from this checkpoint directory (default: the latest valid one in run.dir)")


def resume_overrides(args: argparse.Namespace) -> list[str]:
    if args.fresh:
        return ["run.resume=never"]
    if args.resume:
        return [f"run.resume={args.resume}"]
    return []


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dist-train",
        description="Data-parallel training of feed-forward networks on CPUs or GPUs, one process or many.",
    )
    from dist_train import __version__

    parser.add_argument("--version", action="version", version=f"dist-train {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p_run = sub.add_parser(
        "run", help="train in this process (plain python, under torchrun or under srun)",
        description="Train in this process. Rank and world size come from torch's environment "
                    "(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) when a launcher sets them; "
                    "otherwise this is a single worker.",
    )
    p_run.add_argument("config", metavar="CONFIG", help="YAML run config, e.g. configs/quickstart.yaml")
    p_run.add_argument("overrides", metavar="KEY=VALUE", nargs="*", help=OVERRIDES_HELP)
    add_resume_arguments(p_run)

    from launcher.elastic import add_launch_arguments

    p_launch = sub.add_parser(
        "launch", help="start N workers per node through torch's elastic launcher",
        description="Start workers through torch.distributed.run (torchrun). One node: "
                    "`dist-train launch --nproc-per-node 2 CONFIG`. Several nodes: the same command on "
                    "each node with --nnodes N --rdzv-endpoint HOST:PORT --rdzv-id JOB.",
    )
    add_launch_arguments(p_launch)
    p_launch.add_argument("config", metavar="CONFIG|SCRIPT.py",
                          help="YAML run config, or a Python script that calls dist_train.fit")
    p_launch.add_argument("overrides", metavar="KEY=VALUE|ARG", nargs="*",
                          help=OVERRIDES_HELP + " (for a script: its own arguments; put -- before ones starting with -)")
    add_resume_arguments(p_launch)
    from launcher.prepare_command import add_prepare_parser

    add_prepare_parser(sub)
    p_slurm = sub.add_parser("slurm", help="SLURM: render and submit sbatch scripts",
                             description="Work with a SLURM cluster. See slurm/ for the templates.")
    slurm_sub = p_slurm.add_subparsers(dest="slurm_command", metavar="SLURM_COMMAND", required=True)
    p_submit = slurm_sub.add_parser(
        "submit", help="render an sbatch template for CONFIG and submit it with sbatch",
        description="Render slurm/cpu.sbatch (no GPUs), slurm/single_node_gpu.sbatch (one node) or "
                    "slurm/multi_node.sbatch (--nodes > 1) for CONFIG and submit it; --dry-run prints it. "
                    "The config is checked first. Prints the job id and where the log goes.")
    from launcher.slurm_submit import add_submit_arguments

    add_submit_arguments(p_submit)

    p_report = sub.add_parser(
        "report", help="draw loss, accuracy and learning-rate curves of run directories into a PNG",
        description="Read RUN_DIR/metrics.jsonl of one or more runs and draw training and validation loss, "
                    "validation (and test) accuracy and the learning rate against the optimizer step; "
                    "several runs are overlaid for comparison.",
    )
    p_report.add_argument("run_dirs", metavar="RUN_DIR", nargs="+", help="run directories (run.dir)")
    p_report.add_argument("--out", default=None, help="PNG to write (default: RUN_DIR/report.png of the first run)")

    p_export = sub.add_parser(
        "export", help="write a trained model that predicts from raw inputs: a bundle, and a torch-only .pt2",
        description="Take the newest valid checkpoint of RUN_DIR (or the checkpoint directory given) and write FILE, "
                    "a model bundle (weights, the network's recipe, the input preprocessing, classes, metrics; "
                    "dist_train.load_model(FILE) or `dist-train predict FILE ...`), and FILE with suffix .pt2, the "
                    "same model traced by torch.export for torch alone (torch.export.load(PT2).module() takes raw "
                    "inputs). Whatever the strategy (DDP, DeepSpeed ZeRO 0-3) or precision, weights are float32.",
    )
    p_export.add_argument("source", metavar="RUN_DIR|CHECKPOINT", help="a run directory or a checkpoint directory")
    p_export.add_argument("--out", required=True, help="the bundle to write, e.g. model.pt (model.pt2 beside it)")
    p_export.add_argument("--best", action="store_true", help="the best weights (best_model.pt) instead of the last")
    p_export.add_argument("--state-dict", action="store_true",
                          help="write only the weights as a plain state_dict (as dist-train did before bundles)")
    p_export.add_argument("--allow-changed-code", action="store_true",
                          help="accept a model file (class_path) that changed since training")

    p_predict = sub.add_parser(
        "predict", help="predict with a trained model: raw inputs in, a CSV or .npz of predictions out",
        description="Predict with MODEL (a bundle from `dist-train export`, or a run directory: its newest valid "
                    "checkpoint) for INPUT: a CSV (the training feature columns, by name, in any order), a .npy or "
                    ".npz of inputs, image files or folders (resized as `prepare imagefolder` did), or a prepared "
                    "data set (--split). Writes one row per sample in input order: the class, its name and its "
                    "probability (the --top-k most probable), or the predicted values. With --nproc-per-node N "
                    "the samples are shared among N workers; the file is the same, byte for byte.")
    p_predict.add_argument("model", metavar="MODEL", help="a model bundle (.pt) or a run directory")
    p_predict.add_argument("inputs", metavar="INPUT", nargs="+", help="a CSV, .npy, .npz, image files or folders, "
                                                                        "or a prepared data set directory")
    p_predict.add_argument("--out", required=True, help="the predictions to write: FILE.csv or FILE.npz")
    p_predict.add_argument("--top-k", type=int, default=1, help="classes per sample, most probable first (default 1)")
    _add_inference_arguments(p_predict)

    p_evaluate = sub.add_parser(
        "evaluate", help="metrics of a trained model on its run's test split (or any split, or new data)",
        description="Evaluate MODEL (a bundle, or a run directory) on DATA (as for predict, with targets: a CSV with "
                    "the target column, an .npz with x and y, a folder of class folders of images, a prepared data "
                    "set), or by default on its run's own --split (test). Prints the run's metrics (its loss, "
                    "accuracy or MSE, MAE and R^2) and for classes top-1 and top-k error, log loss, precision, "
                    "recall and F1 per class and macro, and the confusion matrix; --out DIR also writes "
                    "metrics.json, confusion_matrix.csv and confusion_matrix.png. Exact with any number of workers.")
    p_evaluate.add_argument("model", metavar="MODEL", help="a model bundle (.pt) or a run directory")
    p_evaluate.add_argument("data", metavar="DATA", nargs="*", help="data to evaluate on (default: the run's own split)")
    p_evaluate.add_argument("--out", default=None, help="a directory for metrics.json and the confusion matrix")
    p_evaluate.add_argument("--top-k", type=int, default=5, help="k of the top-k accuracy (default 5)")
    _add_inference_arguments(p_evaluate)

    p_sweep = sub.add_parser(
        "sweep", help="hyperparameter search: run trials of a base config over a search space, ranked",
        description="Run the trials of SWEEP (a base run config, a search space, random/grid/tpe, a budget), each "
                    "an ordinary run launched with `dist-train launch` in its own directory under out_dir, and "
                    "print the results best first (also results.csv, results.json and best.yaml in out_dir). "
                    "Running it again skips finished trials and resumes the others. Overrides go to the sweep "
                    "(budget.max_trials=4, out_dir=DIR) or, for run-config keys, to the base config (train.epochs=5).")
    p_sweep.add_argument("sweep", metavar="SWEEP", help="sweep YAML, e.g. configs/sweep_digits.yaml")
    p_sweep.add_argument("overrides", metavar="KEY=VALUE", nargs="*",
                         help="sweep settings (budget.max_trials=4) or base-config keys (train.epochs=5)")
    p_sweep.add_argument("--dry-run", action="store_true", help="print the trials and their parameters; run nothing")
    p_sweep.add_argument("--retry-failed", action="store_true", help="run trials recorded as failed again")

    p_check = sub.add_parser(
        "check", help="sanity checks before a long run: initial loss, overfit a small subset, gradcheck",
        description="In one process: (1) the loss at initialization against its expected value (ln of the number "
                    "of classes for cross-entropy); (2) training on --subset N examples (dropout and weight decay "
                    "off) until they are all classified right, with hints when they are not; (3) "
                    "torch.autograd.gradcheck of the project's hand-written backward (synchronized batch norm) in "
                    "float64. One PASS/FAIL line each; exit status 1 when one fails.")
    p_check.add_argument("config", metavar="CONFIG", help="YAML run config")
    p_check.add_argument("overrides", metavar="KEY=VALUE", nargs="*", help=OVERRIDES_HELP)
    p_check.add_argument("--subset", type=int, default=50, help="examples to overfit (default 50)")
    p_check.add_argument("--steps", type=int, default=500, help="most optimizer steps for the overfit check (default 500)")
    return parser


def _add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    from launcher.elastic import add_launch_arguments

    parser.add_argument("--split", default="test", choices=["train", "val", "test"],
                        help="the split of a prepared data set, or of the run's own data (default test)")
    parser.add_argument("--batch-size", type=int, default=1024, help="samples per forward pass (default 1024)")
    parser.add_argument("--best", action="store_true", help="a run directory's best weights instead of the last")
    parser.add_argument("--allow-changed-code", action="store_true",
                        help="accept a model file (class_path) that changed since training")
    add_launch_arguments(parser)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"run": cmd_run, "launch": cmd_launch, "prepare": cmd_prepare, "report": cmd_report,
                "export": cmd_export, "sweep": cmd_sweep, "check": cmd_check, "slurm": cmd_slurm,
                "predict": cmd_predict, "evaluate": cmd_evaluate}
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what workers of predict and evaluate are given
    return _speaking(commands[args.command], args)


def _speaking(command, args: argparse.Namespace) -> int:
    """A user's mistake is one line and its exit status, never a traceback;
    said once for a job (the rank that met it says it, the others are quiet)."""
    from dist_train.comm import SharedError

    try:
        return command(args)
    except SharedError as exc:
        return exc.exit_code
    except DistTrainError as exc:
        print(f"dist-train: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code


def cmd_slurm(args: argparse.Namespace) -> int:
    from launcher.slurm_submit import submit

    return submit(args)


def cmd_run(args: argparse.Namespace) -> int:
    from dist_train.config import load_config
    from dist_train.run import run
    from dist_train.worker_env import worker_env

    cfg = load_config(args.config, [*args.overrides, *resume_overrides(args)])
    return run(cfg, worker_env(cfg))


def cmd_launch(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dist_train.config import load_config
    from dist_train.job_decision import JobDecision
    from dist_train.preflight import check_job
    from dist_train.run_lock import RunDirLock
    from dist_train.start import plan_start
    from launcher.elastic import check_launch_arguments, launch, planned_world_size

    # Everything that can be checked here is, before any worker starts: one
    # clear line and exit status 2 instead of a traceback per worker.
    check_launch_arguments(args)
    if args.config.endswith(".py"):  # a script calling dist_train.fit: its own config, checked by its workers
        if not Path(args.config).is_file():
            raise DistTrainError(f"script {args.config!r} does not exist")
        if args.fresh or args.resume:
            raise DistTrainError("--fresh and --resume are for a config; a script sets run.resume in its own config")
        return launch(args, args.config, args.overrides, run_dir=None, worker="launcher.script_worker")
    overrides = [*args.overrides, *resume_overrides(args)]
    cfg = load_config(args.config, overrides)
    run_dir = Path(cfg.run.dir)
    world_size = planned_world_size(args)
    if world_size is None:  # an elastic range or a device-dependent count: the workers check and plan
        return launch(args, args.config, overrides, cfg.dist.timeout_s, run_dir, JobDecision(cfg),
                      start_timeout_s=cfg.dist.start_timeout_s)
    resolved = check_job(cfg, world_size)
    if str(args.nnodes) not in ("1", "1:1"):
        # Several nodes: which node holds rank 0 is known only after the
        # rendezvous; rank 0 takes the run directory's lock and plans the start.
        return launch(args, args.config, overrides, cfg.dist.timeout_s, run_dir, JobDecision(cfg, world_size),
                      start_timeout_s=cfg.dist.start_timeout_s)
    # One node: this launcher holds the run directory for the whole job (a
    # second job is refused before it starts a worker) and plans the start once.
    lock = RunDirLock(run_dir, "dist-train launch")
    lock.acquire()
    started = False
    try:
        plan = plan_start(cfg, resolved)  # made once for the job: the workers are handed it
        if plan.finished:
            print(plan.finished_line(run_dir), flush=True)
            return 0
        started = True
        decided = JobDecision(cfg, world_size, str(lock.path.resolve()), plan)
        return launch(args, args.config, overrides, cfg.dist.timeout_s, run_dir, decided,
                      start_timeout_s=cfg.dist.start_timeout_s)
    finally:
        lock.release() if started else lock.release_and_tidy()


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from launcher.tools.report import draw_report

    out = Path(args.out) if args.out else Path(args.run_dirs[0]) / "report.png"
    print(f"wrote {draw_report([Path(d) for d in args.run_dirs], out)}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dist_train.bundle import export, export_state_dict

    if args.state_dict:
        checkpoint = export_state_dict(Path(args.source), Path(args.out), best=args.best)
        print(f"wrote {args.out} (the weights as a plain state_dict) from {checkpoint}")
        return 0
    done = export(Path(args.source), Path(args.out), best=args.best, allow_changed_code=args.allow_changed_code)
    print(f"wrote {done.bundle} from {done.checkpoint}: load it with dist_train.load_model, or predict with "
          f"`dist-train predict {done.bundle} INPUT --out FILE`")
    if done.program is not None:
        print(f"wrote {done.program}: torch alone runs it on raw inputs: "
              f"torch.export.load('{done.program}').module()(inputs)")
    else:
        print(f"dist-train: warning: {done.program_error}", file=sys.stderr)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from launcher.tools.inference import run_predict

    return run_predict(args)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from launcher.tools.inference import run_evaluate

    return run_evaluate(args)


def cmd_sweep(args: argparse.Namespace) -> int:
    from launcher.tools.sweep.scheduler import run_sweep
    from launcher.tools.sweep.spec import load_sweep

    return run_sweep(load_sweep(args.sweep, args.overrides), retry_failed=args.retry_failed, dry_run=args.dry_run)


def cmd_check(args: argparse.Namespace) -> int:
    from launcher.tools.check import run_checks
    from dist_train.config import load_config

    if args.subset < 2:
        raise DistTrainError(f"--subset {args.subset} must be at least 2 examples")
    if args.steps < 1:
        raise DistTrainError(f"--steps {args.steps} must be at least 1")
    return run_checks(load_config(args.config, args.overrides), subset=args.subset, max_steps=args.steps)


def cmd_prepare(args: argparse.Namespace) -> int:
    from launcher.prepare_command import run_prepare

    return run_prepare(args)


if __name__ == "__main__":
    sys.exit(main())
