"""Benchmark: training throughput through `dist-train launch` on prepared
Fashion-MNIST shards, streamed (data.cache: none) and cached in host memory
(data.cache: host), against a hand-written DDP loop over in-memory tensors.

    python tests/benchmarks/bench_data_cache.py [--data data/prepared/fashion-mnist] [--rounds 3]

2 workers on this machine, one thread each, global batch 128, Adam at 1e-3,
no dropout, for MLP 784-64-10 and 784-512-512-10. In each round the three
jobs run one after the other (the order rotating round by round), each
training a few epochs; a job's figure is the median samples/s of its epochs
after the first (dist-train's `epoch` records; the loop's own lines). The
ratio of each dist-train variant to the loop is taken round by round, then
the median. Results: tests/benchmarks/results/data_cache.json."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
MODELS = {"mlp 784-64-10": ([64], 5), "mlp 784-512-512-10": ([512, 512], 3)}  # hidden sizes, epochs


def dist_train(data: str, hidden: list[int], epochs: int, cache: str) -> float:
    run_dir = Path(tempfile.mkdtemp()) / "run"
    cmd = [sys.executable, "-m", "launcher", "launch", "--nproc-per-node", "2", "configs/fashion_mnist_mlp.yaml",
           f"data.path={data}", f"data.cache={cache}", f"model.hidden_sizes={hidden}", "model.dropout=0.0",
           "optim.name=adam", "optim.lr=0.001", "optim.weight_decay=0.0", "schedule.name=constant",
           f"train.epochs={epochs}", "checkpoint.every_epochs=0", "wandb.mode=disabled", f"run.dir={run_dir}"]
    subprocess.run(cmd, cwd=REPO, env=ENV, check=True, capture_output=True)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["samples_per_s"] for r in records if r["event"] == "epoch" and r["epoch"] > 0)


def handwritten(data: str, hidden: list[int], epochs: int) -> float:
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(HERE / "handwritten_fashion.py"), data, "--hidden", *map(str, hidden),
                           "--epochs", str(epochs)], cwd=REPO, env=ENV, check=True, capture_output=True, text=True)
    epochs_seen = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return statistics.median(e["samples_per_s"] for e in epochs_seen if e["epoch"] > 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(REPO / "data/prepared/fashion-mnist"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="which of: " + ", ".join(MODELS))
    args = parser.parse_args()
    if not (Path(args.data) / "manifest.json").is_file():
        print(f"no prepared Fashion-MNIST in {args.data}: apt-get install dataset-fashion-mnist && "
              f"dist-train prepare fashion-mnist --out {args.data}", file=sys.stderr)
        return 2
    results = {}
    for name, (hidden, epochs) in ((m, MODELS[m]) for m in args.models):
        jobs = {"hand-written loop, in memory": lambda: handwritten(args.data, hidden, epochs),
                "dist-train, shards streamed": lambda: dist_train(args.data, hidden, epochs, "none"),
                "dist-train, data.cache=host": lambda: dist_train(args.data, hidden, epochs, "host")}
        rounds: dict[str, list[float]] = {k: [] for k in jobs}
        names = list(jobs)
        for r in range(args.rounds):
            for job in names[r % 3:] + names[:r % 3]:
                rounds[job].append(jobs[job]())
                print(f"{name} round {r}: {job}: {rounds[job][-1]:,.0f} samples/s", flush=True)
        base = rounds["hand-written loop, in memory"]
        results[name] = {job: {"samples_per_s": statistics.median(v),
                               "ratio_to_loop": statistics.median(a / b for a, b in zip(v, base)), "rounds": v}
                         for job, v in rounds.items()}
    out = HERE / "results" / "data_cache.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"data": args.data, "rounds": args.rounds, "models": results}, indent=2))
    print(f"\n{'model':<22}{'job':<32}{'samples/s':>12}{'ratio':>8}")
    for name, jobs in results.items():
        for job, r in jobs.items():
            print(f"{name:<22}{job:<32}{r['samples_per_s']:>12,.0f}{r['ratio_to_loop']:>8.2f}")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
