"""Benchmark: `dist-train predict` on Fashion-MNIST's test set (10,000 images)
against a minimal torch loop over the same exported module, and the time
`dist-train export` takes.

    python tests/benchmarks/bench_predict.py [--rounds 5]

Set-up (not timed): Fashion-MNIST prepared as shards (Debian's
dataset-fashion-mnist), the 784-64-10 MLP of configs/fashion_mnist_small.yaml
trained for 300 steps in one process, and the test split's raw images saved
as one .npy (10000, 1, 28, 28) uint8.

Timed, alternating in each round so the machine's drift falls on all alike:
- `dist-train export RUN --out model.pt` (writes the bundle and the .pt2),
  whole command;
- `dist-train predict model.pt test.npy --out p.csv --nproc-per-node 2` and
  the same with one process, whole commands, and the samples/s each reports
  (its own clock around the prediction, inputs read, outputs gathered);
- `tests/benchmarks/minimal_predict.py`: torch alone, `torch.export.load` of
  model.pt2, a loop over batches of 1024, softmax and argmax, the same CSV
  columns written; whole process, and its samples/s around the loop.
Results: tests/benchmarks/results/predict.json (medians of the rounds)."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env or ENV, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return wall, proc.stdout + proc.stderr


def rate(output: str) -> float:
    found = re.search(r"\(([\d,]+) samples/s\)", output)
    return float(found.group(1).replace(",", "")) if found else float("nan")


def set_up(work: Path) -> tuple[Path, Path]:
    import numpy as np

    from dist_train.config import load_config
    from dist_train.data.prepare import PrepareOptions, prepare
    from dist_train.data.shards import iter_blocks
    from dist_train.env import DistEnv
    from dist_train.run import run

    shards = work / "fashion-mnist"
    manifest = prepare("fashion-mnist", PrepareOptions(out=shards))
    cfg = load_config(REPO / "configs" / "fashion_mnist_small.yaml",
                      [f"data.path={shards}", f"run.dir={work / 'run'}", "train.max_steps=300", "wandb.mode=disabled",
                       "run.progress=false", "dist.device=cpu"])
    assert run(cfg, DistEnv()) == 0
    images = np.concatenate([x for info in manifest.splits["test"] for x, _ in iter_blocks(shards / info.file)])
    np.save(work / "test.npy", images)
    return work / "run", work / "test.npy"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-predict-"))
    run_dir, images = set_up(work)
    model = work / "model.pt"
    launcher = [sys.executable, "-m", "launcher"]
    runs: dict[str, list[dict[str, float]]] = {"export": [], "predict_2_workers": [], "predict_1_process": [],
                                               "minimal_torch": []}
    jobs = {
        "export": lambda: launcher + ["export", str(run_dir), "--out", str(model)],
        "predict_2_workers": lambda: launcher + ["predict", str(model), str(images), "--out", str(work / "p2.csv"),
                                                 "--nproc-per-node", "2"],
        "predict_1_process": lambda: launcher + ["predict", str(model), str(images), "--out", str(work / "p1.csv")],
        "minimal_torch": lambda: [sys.executable, str(HERE / "minimal_predict.py"), str(model.with_suffix(".pt2")),
                                  str(images), str(work / "pm.csv")],
    }
    timed(jobs["export"]())  # the page cache warm for all
    for i in range(args.rounds):
        names = list(jobs) if i % 2 == 0 else list(jobs)[::-1]
        for name in names:
            env = {**ENV, "OMP_NUM_THREADS": "1"} if name == "predict_2_workers" else ENV
            wall, out = timed(jobs[name](), env)
            runs[name].append({"wall_s": wall, "samples_per_s": rate(out)})
            print(f"round {i} {name}: {wall:.2f} s, {runs[name][-1]['samples_per_s']:,.0f} samples/s", flush=True)
    same = (work / "p1.csv").read_bytes() == (work / "p2.csv").read_bytes()
    medians = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    result = {"rounds": args.rounds, "medians": medians, "runs": runs, "two_workers_file_identical": same,
              "samples": 10000, "cpu_count": os.cpu_count()}
    out = HERE / "results" / "predict.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nmedians of {args.rounds} rounds (whole command; samples/s around the prediction):")
    for name, m in medians.items():
        print(f"  {name:<20}{m['wall_s']:>7.2f} s  {m['samples_per_s']:>10,.0f} samples/s")
    print(f"  the 2-worker file equals the 1-process file byte for byte: {same}\n-> {out}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
