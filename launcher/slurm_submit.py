"""`dist-train slurm submit`: render an sbatch template from slurm/ and submit it."""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from dist_train.errors import DistTrainError

TEMPLATES = Path(__file__).resolve().parent.parent / "slurm"


def add_submit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG", help="YAML run config")
    parser.add_argument("overrides", metavar="KEY=VALUE", nargs="*", help="config overrides, as for `run`")
    parser.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    parser.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node; 0 (default): the CPU template")
    parser.add_argument("--ntasks", type=int, default=2,
                        help="without GPUs: workers in all, spread evenly over --nodes (default 2)")
    parser.add_argument("--cpus-per-task", type=int, default=1, help="CPU cores per worker (default 1)")
    parser.add_argument("--time", default="01:00:00", help="time limit, HH:MM:SS (default 01:00:00)")
    parser.add_argument("--partition", default=None, help="partition (default: the cluster's default)")
    parser.add_argument("--job-name", default=None, help="job name (default: the config's file name)")
    parser.add_argument("--max-restarts", type=int, default=1, help="multi-node: worker restarts (default 1)")
    parser.add_argument("--template", default=None,
                        help="an sbatch template of your own (default: slurm/cpu, single_node_gpu or multi_node)")
    parser.add_argument("--dry-run", action="store_true", help="print the rendered script instead of submitting it")


def choose_template(args: argparse.Namespace) -> Path:
    if args.template:
        return Path(args.template)
    if args.nodes > 1:
        return TEMPLATES / "multi_node.sbatch"
    return TEMPLATES / ("single_node_gpu.sbatch" if args.gpus_per_node else "cpu.sbatch")


def workers_per_node(args: argparse.Namespace) -> int:
    """One worker per GPU; without GPUs, --ntasks workers spread evenly over the nodes."""
    if args.gpus_per_node:
        return args.gpus_per_node
    if args.nodes < 1 or args.ntasks % args.nodes:
        raise DistTrainError(f"--ntasks {args.ntasks} does not spread evenly over --nodes {args.nodes}: without GPUs "
                             f"each node runs ntasks / nodes workers; pass a multiple of {args.nodes}")
    return args.ntasks // args.nodes


def render(args: argparse.Namespace, run_dir: Path) -> str:
    template = choose_template(args)
    per_node = workers_per_node(args)
    if not template.is_file():
        raise DistTrainError(f"sbatch template {template} not found; pass --template PATH")
    job_name = args.job_name or Path(args.config).stem
    values = {
        "job_name": job_name, "nodes": str(args.nodes), "gpus_per_node": str(args.gpus_per_node),
        "ntasks": str(args.ntasks), "cpus_per_task": str(args.cpus_per_task), "time": args.time,
        "workers_per_node": str(per_node), "cpus_per_node": str(per_node * args.cpus_per_task),
        "gpus_line": f"#SBATCH --gpus-per-node={args.gpus_per_node}" if args.gpus_per_node else "",
        "partition_line": f"#SBATCH --partition={args.partition}" if args.partition else "",
        "log_dir": str((run_dir / "slurm").resolve()), "workdir": shlex.quote(str(Path.cwd())),
        "config": shlex.quote(str(Path(args.config).resolve())),
        "overrides": " ".join(shlex.quote(o) for o in args.overrides), "max_restarts": str(args.max_restarts),
    }
    text = template.read_text()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def submit(args: argparse.Namespace) -> int:
    from dist_train.config import load_config
    from dist_train.preflight import check_job

    cfg = load_config(args.config, args.overrides)  # a mistake shows here, not in the job's log
    workers = args.nodes * workers_per_node(args)
    check_job(cfg, workers)
    run_dir = Path(cfg.run.dir)
    script = render(args, run_dir)
    if args.dry_run:
        print(script, end="")
        return 0
    if shutil.which("sbatch") is None:
        raise DistTrainError("sbatch is not on PATH: submit from a SLURM login node, or use --dry-run to see the script")
    (run_dir / "slurm").mkdir(parents=True, exist_ok=True)
    path = run_dir / "slurm" / f"submit-{time.strftime('%Y%m%d-%H%M%S')}.sbatch"
    path.write_text(script)
    proc = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise DistTrainError(f"sbatch refused the job: {proc.stderr.strip()}")
    job_id = proc.stdout.strip().split(";")[0]
    job_name = args.job_name or Path(args.config).stem
    print(f"submitted job {job_id} ({path}); logs: {(run_dir / 'slurm').resolve()}/{job_name}-{job_id}.out")
    return 0
