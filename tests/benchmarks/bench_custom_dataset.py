"""Benchmark: how fast a custom map-style dataset reaches training through
dist-train's loader, against what the Fashion-MNIST MLP consumes per rank.

    python tests/benchmarks/bench_custom_dataset.py

A dataset as users write them: Fashion-MNIST-shaped items (a 1x28x28 uint8
image tensor and a class) held in memory, returned by `__getitem__` one at a
time, or a whole micro-batch at once by `__getitems__` (as two stacked tensors). One process reads as
rank 0 of 2 (per-rank batch 64 of a global 128): whole epochs through
CustomData's loader (the sampler plan, fetch, collate, normalize to float32)
with 0, 1 and 2 DataLoader reader processes, median of 3 epochs after a
warm-up. Consumption: what one rank of 2 DDP workers trains per second
(bench_shard_loader.py's consumer, run the same way). Results:
tests/benchmarks/results/custom_dataset.json."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
GLOBAL_BATCH = 128
SAMPLES = 51_000  # Fashion-MNIST's training split as dist-train prepares it


class Items(Dataset):
    num_classes = 10

    def __init__(self, n: int, batched: bool) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
        self.y = torch.randint(0, 10, (n,), generator=g)
        if batched:
            self.__getitems__ = self._getitems  # noqa: PLW0201 - looked up on the instance by DataLoader

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]

    def _getitems(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.tensor(indices)
        return self.x[idx], self.y[idx]  # the batch itself: nothing left to stack


def loader_rates(epochs: int = 3) -> dict[str, float]:
    from dist_train.comm import Comm
    from dist_train.config import load_config
    from dist_train.data.custom import CustomData
    from dist_train.env import DistEnv

    torch.set_num_threads(1)
    env = DistEnv(rank=0, world_size=2)  # one rank's share; no process group needed to read
    rates = {}
    for batched in (False, True):
        splits = (Items(SAMPLES, batched), Items(256, batched), Items(256, batched))
        for workers in (0, 1, 2):
            cfg = load_config(None, ["data.source=custom", "data.class_path=x.y", f"data.loader_workers={workers}"])
            data = CustomData(splits, cfg.data, env, GLOBAL_BATCH, 1, 0, Comm())  # statistics from the whole split, here
            seen = []
            for epoch in range(epochs + 1):
                start = time.perf_counter()
                n = sum(sum(len(b.targets) for b in step.micro_batches) for step in data.train.epoch(epoch))
                seen.append(n / (time.perf_counter() - start))
            name = f"{'__getitems__' if batched else '__getitem__'}, {workers} loader worker(s)"
            rates[name] = statistics.median(seen[1:])
            print(f"{name:<40}{rates[name]:>12,.0f} samples/s", flush=True)
    return rates


def main() -> int:
    sys.path.insert(0, str(REPO))
    rates = loader_rates()
    consumed_file = Path(tempfile.mkdtemp()) / "consumption.json"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                    str(HERE / "bench_shard_loader.py"), "--consumer", str(consumed_file), "25600"],
                   check=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    consumption = json.loads(consumed_file.read_text())
    out = HERE / "results" / "custom_dataset.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"loader_samples_per_s": rates, "training_consumes_samples_per_s_per_rank": consumption},
                              indent=2))
    print(f"\n{'training, 2 DDP workers, per rank':<44}{'samples/s':>12}{'fastest loader / this':>24}")
    fastest = max(rates.values())
    for name, rate in consumption.items():
        print(f"{name:<44}{rate:>12,.0f}{fastest / rate:>23.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
