"""Benchmark: time to accuracy on Fashion-MNIST, 2 CPU workers: dist-train
(the shipped configs, through `dist-train launch`) against a hand-written
torch DDP loop run to the same validation accuracy.

    python tests/benchmarks/bench_time_to_accuracy.py [--data data/prepared/fashion-mnist] [--rounds 2]

Targets: MLP 784-64-10 to 0.88 (configs/fashion_mnist_small.yaml) and
784-256-128-10 to 0.89 (configs/fashion_mnist_mlp.yaml). Time is counted
from the command's start (interpreters, imports, rendezvous, data included)
to the end of the first epoch whose validation accuracy reaches the target,
as DAWNBench counts it. Baselines, over the same data in memory:
- "plain loop": the hand-written loop of bench_ddp_overhead.py (Adam at
  1e-3, no schedule, no dropout), what a torchrun script usually is;
- "same recipe": the hand-written loop with the shipped config's recipe
  (AdamW, weight decay, dropout, cosine over the same number of epochs), to
  tell the recipe's gain from the system's cost.
The jobs alternate round by round; the median over rounds is reported.
Results: tests/benchmarks/results/time_to_accuracy.json."""

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
CASES = {"mlp 784-64-10 to 0.88": ("configs/fashion_mnist_small.yaml", 0.88, [64], 0.1),
         "mlp 784-256-128-10 to 0.89": ("configs/fashion_mnist_mlp.yaml", 0.89, [256, 128], 0.2)}
MAX_EPOCHS = 40


def reached(epochs: list[tuple[float, float]], target: float) -> tuple[float | None, int | None]:
    """Seconds at the first epoch at or above the target, and which epoch (1-based)."""
    return next(((t, i + 1) for i, (t, accuracy) in enumerate(epochs) if accuracy >= target), (None, None))


def dist_train(config: str, target: float, data: str) -> dict:
    run_dir = Path(tempfile.mkdtemp()) / "run"
    start = time.time()
    subprocess.run([sys.executable, "-m", "launcher", "launch", "--nproc-per-node", "2", config, f"data.path={data}",
                    "wandb.mode=offline", f"run.dir={run_dir}"], cwd=REPO, env=ENV, check=True, capture_output=True)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [(r["time"] - start, r["val_accuracy"]) for r in records if r["event"] == "epoch"]
    seconds, epoch = reached(epochs, target)
    test = next(r for r in records if r["event"] == "test")["test_accuracy"]
    return {"seconds": seconds, "epochs": epoch, "job_s": time.time() - start, "best_val": max(a for _, a in epochs),
            "test_accuracy": test}


def loop(target: float, data: str, hidden: list[int], recipe: list[str]) -> dict:
    start = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             str(HERE / "handwritten_fashion.py"), data, "--hidden", *map(str, hidden), "--epochs",
                             str(MAX_EPOCHS if not recipe else 30), *recipe], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    epochs = []
    for line in proc.stdout:
        if line.startswith("{"):
            epochs.append((time.time() - start, json.loads(line)["val_accuracy"]))
            if epochs[-1][1] >= target and not recipe:
                break  # reached: a user would stop here
    proc.kill()
    proc.wait()
    seconds, epoch = reached(epochs, target)
    return {"seconds": seconds, "epochs": epoch, "best_val": max(a for _, a in epochs)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(REPO / "data/prepared/fashion-mnist"))
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if not (Path(args.data) / "manifest.json").is_file():
        print(f"no prepared Fashion-MNIST in {args.data}", file=sys.stderr)
        return 2
    results = {}
    for name, (config, target, hidden, dropout) in CASES.items():
        recipe = ["--lr", "0.002", "--weight-decay", "0.05", "--dropout", str(dropout), "--cosine"]
        jobs = {"dist-train (shipped config)": lambda: dist_train(config, target, args.data),
                "hand-written plain loop": lambda: loop(target, args.data, hidden, []),
                "hand-written, same recipe": lambda: loop(target, args.data, hidden, recipe)}
        runs: dict[str, list[dict]] = {k: [] for k in jobs}
        names = list(jobs)
        for r in range(args.rounds):
            for job in names[r % 3:] + names[:r % 3]:
                runs[job].append(jobs[job]())
                print(f"{name} round {r}: {job}: {runs[job][-1]}", flush=True)
        results[name] = {job: {"seconds_median": statistics.median(x["seconds"] for x in v if x["seconds"])
                               if any(x["seconds"] for x in v) else None, "runs": v} for job, v in runs.items()}
    out = HERE / "results" / "time_to_accuracy.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\n{'target':<30}{'job':<30}{'seconds':>9}{'epochs':>8}")
    for name, jobs in results.items():
        for job, r in jobs.items():
            seconds = r["seconds_median"]
            reached_at = [x["epochs"] for x in r["runs"] if x["epochs"]]
            epochs = statistics.median(reached_at) if reached_at else "-"
            print(f"{name:<30}{job:<30}{seconds if seconds is None else round(seconds, 1)!s:>9}{epochs!s:>8}")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
