"""Benchmark: how fast the shard loader delivers 28x28 uint8 images, against the
in-memory source and against what the Fashion-MNIST MLP training step consumes.

    python tests/benchmarks/bench_shard_loader.py [--data data/prepared/fashion-mnist]

In one run:
1. loader rates, one process as one rank of 2 (per-rank batch 64 of a global
   128): the shard loader with 0, 1 and 2 loader workers, and the in-memory
   loader, each iterating whole epochs (decode, shuffle, batch, normalize),
   median of 3 epochs;
2. consumption: 2 DDP workers under torchrun (one thread each) train the MLPs
   on in-memory data of the same shape; samples/s per rank is what one rank's
   loader must deliver.
The loader must deliver at least 5x what a rank consumes. Uses the prepared
Fashion-MNIST shards when present, else prepares synthetic 28x28 uint8 shards
of the same size. Results: tests/benchmarks/results/shard_loader.json.
"""

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
PER_RANK_BATCH, GLOBAL_BATCH = 64, 128
MODELS = {"mlp 784-64-10": [64], "mlp 784-256-128-10 (fashion_mnist_mlp.yaml)": [256, 128]}


def loader_rates(path: Path, epochs: int = 3) -> dict[str, float]:
    import torch

    from dist_train.config import DataConfig
    from dist_train.data.loader import InMemoryData
    from dist_train.data.normalization import Normalizer
    from dist_train.data.sources import Split, Splits
    from dist_train.data.shards import load_manifest
    from dist_train.data.stream import ShardTrainLoader
    from dist_train.env import DistEnv

    torch.set_num_threads(1)
    env = DistEnv(rank=0, world_size=2)  # one rank's share; no process group needed to read
    rates = {}
    for workers in (0, 1, 2):
        cfg = DataConfig(source="shards", path=str(path), loader_workers=workers, verify=False)
        manifest = load_manifest(path)  # (ShardData would verify collectively; one process here)
        norm = Normalizer(manifest.normalization, manifest.input_shape, "per_channel", "cpu")
        loader = ShardTrainLoader(manifest, cfg, env, PER_RANK_BATCH, 1, 0, norm)
        times = []
        for epoch in range(epochs + 1):
            start = time.perf_counter()
            n = sum(len(s.micro_batches[0].targets) for s in loader.epoch(epoch))
            times.append(n / (time.perf_counter() - start))
        rates[f"shards, {workers} loader workers"] = statistics.median(times[1:])
    n = manifest.num_samples("train")
    x = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8).float()
    y = torch.randint(0, 10, (n,))
    split = Split(x, y)
    mem = InMemoryData(Splits(split, split, split, (1, 28, 28), 10), env, GLOBAL_BATCH, 1, 0, False)
    times = []
    for epoch in range(epochs + 1):
        start = time.perf_counter()
        count = sum(len(s.micro_batches[0].targets) for s in mem.train.epoch(epoch))
        times.append(count / (time.perf_counter() - start))
    rates["in memory"] = statistics.median(times[1:])
    return rates


def consumption_worker(out: str, samples: int) -> None:
    import torch
    import torch.distributed as dist

    from dist_train.config import load_config
    from dist_train.data.loader import InMemoryData
    from dist_train.data.sources import Split, Splits
    from dist_train.distributed import process_group
    from dist_train.env import DistEnv
    from tests.helpers import build_trainer

    env = DistEnv.from_env(device="cpu")
    torch.set_num_threads(1)
    x, y = torch.randn(samples, 1, 28, 28), torch.randint(0, 10, (samples,))
    split = Split(x, y)
    splits = Splits(split, Split(x[:256], y[:256]), Split(x[:256], y[:256]), (1, 28, 28), 10)
    result = {}
    with process_group(env, 120):
        for name, hidden in MODELS.items():
            cfg = load_config(None, [f"model.hidden_sizes={hidden}", f"train.global_batch_size={GLOBAL_BATCH}",
                                     "dist.device=cpu", "model.dropout=0.2"])
            data = InMemoryData(splits, env, GLOBAL_BATCH, 1, 0, False)
            trainer = build_trainer(cfg, env, data=data)
            rates = []
            for epoch in range(4):
                dist.barrier()
                start = time.perf_counter()
                trainer.state.epoch, trainer.state.step_in_epoch = epoch, 0
                n = trainer.train_epoch()[1]
                dist.barrier()
                rates.append(n / (time.perf_counter() - start))
            result[name] = statistics.median(rates[1:]) / env.world_size  # per rank
    if env.is_rank0:
        Path(out).write_text(json.dumps(result))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(REPO / "data/prepared/fashion-mnist"))
    parser.add_argument("--consumer", nargs=2, metavar=("OUT", "SAMPLES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.consumer:
        consumption_worker(args.consumer[0], int(args.consumer[1]))
        return 0
    sys.path.insert(0, str(REPO))
    path = Path(args.data)
    if not (path / "manifest.json").is_file():
        from dist_train.data.prepare import PrepareOptions, prepare

        path = Path(tempfile.mkdtemp()) / "synthetic-28x28"
        prepare("synthetic", PrepareOptions(out=path, num_samples=70_000, input_shape=(1, 28, 28)))
    rates = loader_rates(path)
    consumed_file = Path(tempfile.mkdtemp()) / "consumption.json"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                    str(Path(__file__).resolve()), "--consumer", str(consumed_file), "25600"],
                   check=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    consumption = json.loads(consumed_file.read_text())
    out = HERE / "results" / "shard_loader.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"data": str(path), "loader_samples_per_s": rates,
                               "training_consumes_samples_per_s_per_rank": consumption}, indent=2))
    print(f"\ndata: {path}")
    print(f"{'loader (one rank of 2, batch 64)':<44}{'samples/s':>12}")
    for name, rate in rates.items():
        print(f"{name:<44}{rate:>12,.0f}")
    print(f"\n{'training, 2 DDP workers, per rank':<44}{'samples/s':>12}{'slowest loader / this':>24}")
    slowest = min(v for k, v in rates.items() if k.startswith("shards"))
    for name, rate in consumption.items():
        print(f"{name:<44}{rate:>12,.0f}{slowest / rate:>23.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
