"""Benchmark: the quick start's whole job against a minimal torchrun script of
the same job, and where a `dist-train launch` job's wall time goes.

    python tests/benchmarks/bench_job_overhead.py [--pairs 6]

Whole processes, alternating (dist-train, minimal, minimal, dist-train, ...)
so the machine's drift falls on both: `dist-train launch --nproc-per-node 2
configs/quickstart.yaml` (W&B offline and checkpoints as shipped) against
`torchrun --standalone --nproc-per-node 2 tests/benchmarks/minimal_digits.py`
(the same network, optimizer, schedule, data split, batch and epochs, with
validation every epoch and the test split at the end). The ratio is the
median of the per-pair ratios of wall times.

The breakdown of a dist-train job comes from its own clock (metrics.jsonl's
timestamps) and the outside one: start-up (interpreters, imports, torch's
agent and rendezvous, the process group, data, model, W&B's writer) until the
`start` record; training (epochs with validation and checkpoints); the test
split and the final checkpoint; and teardown (the last save, W&B finishing,
the process group, the agent) until the command returns. The minimal
script's phases come from the time of its output lines. Import costs are
measured alone, one interpreter each. Results: tests/benchmarks/results/job_overhead.json."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def timed_lines(cmd: list[str]) -> tuple[float, list[tuple[float, str]]]:
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = [(time.time() - start, line.rstrip()) for line in proc.stdout]
    if proc.wait() != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n" + "\n".join(l for _, l in lines[-80:]))
    return time.time() - start, lines


def dist_train_job(run_dir: Path) -> dict[str, float]:
    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.time()
    wall, _ = timed_lines([sys.executable, "-m", "launcher", "launch", "--nproc-per-node", "2",
                           "configs/quickstart.yaml", f"run.dir={run_dir}", "wandb.mode=offline"])
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    begin = next(r for r in records if r["event"] == "start")["time"]
    last_epoch = [r for r in records if r["event"] == "epoch"][-1]["time"]
    final = records[-1]["time"]
    return {"wall_s": wall, "startup_s": begin - start, "training_s": last_epoch - begin,
            "test_and_final_checkpoint_s": final - last_epoch, "teardown_s": start + wall - final,
            "test_accuracy": next(r for r in records if r["event"] == "test")["test_accuracy"]}


FAILED_MINIMAL: list[str] = []


def minimal_job() -> dict[str, float]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(HERE / "minimal_digits.py")]
    try:
        wall, lines = timed_lines(cmd)
    except SystemExit as exc:  # seen once in a while here: a gloo worker of the plain script aborting; run it again
        FAILED_MINIMAL.append(str(exc)[-2000:])
        wall, lines = timed_lines(cmd)
    epochs = [t for t, line in lines if line.startswith("epoch ")]
    test = next((t, line) for t, line in lines if line.startswith("test_loss"))
    return {"wall_s": wall, "startup_s": epochs[0], "training_s": epochs[-1] - epochs[0],
            "test_s": test[0] - epochs[-1], "teardown_s": wall - test[0],
            "test_accuracy": float(test[1].split()[-1])}


def import_costs() -> dict[str, float]:
    """Seconds to start an interpreter and import each, median of 3 (an empty interpreter first)."""
    found = {}
    for what in ("pass", "import torch", "import torch.distributed.run", "import launcher.cli",
                 "from dist_train.run import run", "from launcher.elastic import launch",
                 "import sklearn.datasets", "import wandb", "import deepspeed", "import optuna",
                 "import matplotlib.pyplot", "import webdataset"):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            ok = subprocess.run([sys.executable, "-c", what], cwd=REPO, env=ENV, capture_output=True).returncode == 0
            times.append(time.perf_counter() - start)
        if ok:
            found[what] = statistics.median(times)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=6)
    args = parser.parse_args()
    run_dir = Path(tempfile.mkdtemp()) / "quickstart"
    ours, theirs = [], []
    minimal_job()  # warm the page cache for both
    for i in range(args.pairs):
        order = [("ours", lambda: dist_train_job(run_dir)), ("minimal", minimal_job)]
        for name, job in order if i % 2 == 0 else order[::-1]:
            (ours if name == "ours" else theirs).append(job())
            print(f"pair {i} {name}: {(ours if name == 'ours' else theirs)[-1]['wall_s']:.2f} s", flush=True)
    ratios = [o["wall_s"] / m["wall_s"] for o, m in zip(ours, theirs)]
    median = {k: statistics.median(r[k] for r in ours) for k in ours[0]}
    median_min = {k: statistics.median(r[k] for r in theirs) for k in theirs[0]}
    imports = import_costs()
    result = {"pairs": args.pairs, "ratio_median": statistics.median(ratios), "ratios": ratios,
              "dist_train_median": median, "minimal_median": median_min, "dist_train_runs": ours,
              "minimal_runs": theirs, "import_seconds": imports, "minimal_failures_rerun": FAILED_MINIMAL}
    out = HERE / "results" / "job_overhead.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwall time, median of {args.pairs} alternating pairs: dist-train {median['wall_s']:.2f} s, minimal "
          f"{median_min['wall_s']:.2f} s, ratio {result['ratio_median']:.3f} (range {min(ratios):.2f}-{max(ratios):.2f})")
    print(f"{'phase (median)':<34}{'dist-train':>12}{'minimal':>10}")
    for ours_key, their_key in (("startup_s", "startup_s"), ("training_s", "training_s"),
                                ("test_and_final_checkpoint_s", "test_s"), ("teardown_s", "teardown_s")):
        print(f"{ours_key:<34}{median[ours_key]:>11.2f}s{median_min[their_key]:>9.2f}s")
    print(f"{'test accuracy':<34}{median['test_accuracy']:>12.4f}{median_min['test_accuracy']:>10.4f}")
    print("\ninterpreter + import, one process each:")
    for what, seconds in imports.items():
        print(f"  {what:<40}{seconds:>6.2f} s")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
