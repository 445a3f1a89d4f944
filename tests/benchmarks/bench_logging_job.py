"""Benchmark: whole `dist-train launch` jobs with logging on against off, in one run.

    python tests/benchmarks/bench_logging_job.py [--rounds 8] [--config configs/quickstart.yaml]

The README's first command, as a user runs it: 2 workers, the quickstart config,
W&B offline with the progress bar on a terminal (a pty here), against W&B
disabled and no bar. Rounds alternate the two (order flipped each round). The
figures are the training throughput (samples over the summed `epoch_seconds`
of metrics.jsonl, so start-up is left out) and the wall time of the whole job.
Both are medians of the per-round ratios on/off. Where `bench_logging_overhead.py`
isolates the cost per step in one process, this one includes what the job
really runs: the W&B writer process and W&B's own, on the same cores as the
workers. Results: tests/benchmarks/results/logging_job.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

VARIANTS = {"on": ["wandb.mode=offline", "run.progress=true"], "off": ["wandb.mode=disabled", "run.progress=false"]}


def run_job(config: str, run_dir: Path, overrides: list[str]) -> tuple[float, float]:
    """(samples/s over the epochs, wall seconds of the job); stdout and stderr on a pty."""
    cmd = [sys.executable, "-m", "launcher", "launch", "--nproc-per-node", "2", config, f"run.dir={run_dir}",
           *overrides]
    leader, follower = pty.openpty()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, cwd=REPO, close_fds=True)
    os.close(follower)
    output = []
    while True:  # drain the terminal until the job closes it
        try:
            data = os.read(leader, 65536)
        except OSError:
            break
        if not data:
            break
        output.append(data)
    os.close(leader)
    code = proc.wait(timeout=600)
    wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"job failed ({code}):\n{b''.join(output).decode(errors='replace')[-3000:]}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["event"] == "epoch"]
    start_record = next(r for r in records if r["event"] == "start")
    samples = start_record["train_samples"] * len(epochs)
    return samples / sum(r["epoch_seconds"] for r in epochs), wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--config", default="configs/quickstart.yaml")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp())
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    walls: dict[str, list[float]] = {name: [] for name in VARIANTS}
    run_job(args.config, root / "warm-up", VARIANTS["off"])
    for r in range(args.rounds):
        for name in (list(VARIANTS) if r % 2 == 0 else list(VARIANTS)[::-1]):
            rate, wall = run_job(args.config, root / f"{name}-{r}", VARIANTS[name])
            rates[name].append(rate)
            walls[name].append(wall)
            print(f"round {r} {name}: {rate:,.0f} samples/s, {wall:.1f} s", flush=True)
    ratio = statistics.median(a / b for a, b in zip(rates["on"], rates["off"]))
    wall_ratio = statistics.median(a / b for a, b in zip(walls["on"], walls["off"]))
    noise = statistics.median(abs(a / b - 1) for a, b in zip(rates["off"][1:], rates["off"][:-1]))
    result = {"config": args.config, "rounds": args.rounds, "workers": 2, "cpu": os.cpu_count(),
              "date": time.strftime("%Y-%m-%d"), "samples_per_s": {k: statistics.median(v) for k, v in rates.items()},
              "wall_s": {k: statistics.median(v) for k, v in walls.items()}, "throughput_on_vs_off": ratio,
              "wall_on_vs_off": wall_ratio, "round_to_round_noise_off": noise}
    print(f"\nthroughput on/off: {ratio:.3f}   job wall time on/off: {wall_ratio:.3f}   "
          f"(round-to-round noise with logging off: {noise:.1%})")
    out = HERE / "results" / "logging_job.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
