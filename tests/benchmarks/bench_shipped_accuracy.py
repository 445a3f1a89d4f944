"""Benchmark: the test accuracy the shipped configs reach, over 5 seeds, and
what each run costs in wall time.

    python tests/benchmarks/bench_shipped_accuracy.py [--data data/prepared/fashion-mnist] [--seeds 5]

Each config as shipped, with `train.seed` 1..5, through `dist-train launch
--nproc-per-node 2` (W&B offline, checkpoints as the config says): the
quick start (digits), fashion_mnist_small.yaml (MLP 784-64-10) and
fashion_mnist_mlp.yaml (784-256-128-10), the last two on prepared
Fashion-MNIST shards. Records every seed's test accuracy, the mean and the
worst, and the median wall time of a whole job (the command, start to end)
and of its training (metrics.jsonl: from the `start` record to the last
epoch). Results: tests/benchmarks/results/shipped_accuracy.json."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
GOALS = {"configs/quickstart.yaml": (0.975, 0.965), "configs/fashion_mnist_small.yaml": (0.885, None),
         "configs/fashion_mnist_mlp.yaml": (0.895, None)}  # (mean at least, every seed at least)


def one_run(config: str, seed: int, data: str) -> dict[str, float]:
    run_dir = Path(tempfile.mkdtemp()) / "run"
    extra = [f"data.path={data}"] if "fashion" in config else []
    start = time.time()
    subprocess.run([sys.executable, "-m", "launcher", "launch", "--nproc-per-node", "2", config, f"train.seed={seed}",
                    "wandb.mode=offline", f"run.dir={run_dir}", *extra], cwd=REPO, env=ENV, check=True,
                   capture_output=True)
    wall = time.time() - start
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    begin = next(r for r in records if r["event"] == "start")["time"]
    last = [r for r in records if r["event"] == "epoch"][-1]["time"]
    test = next(r for r in records if r["event"] == "test")
    return {"seed": seed, "test_accuracy": test["test_accuracy"], "wall_s": wall, "training_s": last - begin}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(REPO / "data/prepared/fashion-mnist"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--configs", nargs="+", default=list(GOALS))
    args = parser.parse_args()
    results = {}
    for config in args.configs:
        if "fashion" in config and not (Path(args.data) / "manifest.json").is_file():
            print(f"skipping {config}: no prepared Fashion-MNIST in {args.data}", file=sys.stderr)
            continue
        runs = []
        for seed in range(1, args.seeds + 1):
            runs.append(one_run(config, seed, args.data))
            print(f"{config} seed {seed}: {runs[-1]['test_accuracy']:.4f} in {runs[-1]['wall_s']:.1f} s", flush=True)
        accuracies = [r["test_accuracy"] for r in runs]
        goal_mean, goal_worst = GOALS.get(config, (None, None))
        results[config] = {"mean": statistics.mean(accuracies), "worst": min(accuracies), "goal_mean": goal_mean,
                           "goal_worst": goal_worst, "wall_s_median": statistics.median(r["wall_s"] for r in runs),
                           "training_s_median": statistics.median(r["training_s"] for r in runs), "runs": runs}
    out = HERE / "results" / "shipped_accuracy.json"
    out.parent.mkdir(exist_ok=True)
    kept = json.loads(out.read_text()) if out.is_file() else {}  # a rerun of some configs keeps the others' figures
    out.write_text(json.dumps({**kept, **results}, indent=2))
    print(f"\n{'config':<36}{'mean':>8}{'worst':>8}{'goal':>8}{'job s':>8}{'training s':>12}")
    for config, r in results.items():
        print(f"{config:<36}{r['mean']:>8.4f}{r['worst']:>8.4f}{r['goal_mean'] or 0:>8.3f}{r['wall_s_median']:>8.1f}"
              f"{r['training_s_median']:>12.1f}")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
