"""Benchmark: dist-train's training loop against a minimal hand-written torch
DDP loop, same model, data, global batch, workers and threads, in one run.

    python tests/benchmarks/bench_ddp_overhead.py [--nproc 2] [--rounds 31] [--hand-bucket-cap-mb 25]

The driver starts the workers with torchrun (one intra-op thread each, as
torchrun sets for several workers). In each worker, short epochs (about half a second)
alternate between the two loops, the order flipping every round, each timed
between two barriers. This machine's speed drifts by 10% or more over seconds,
so the loops are compared round by round: the ratio is the median of the
per-round ratios, and samples/s is all samples over all time. The result is
printed and written to tests/benchmarks/results/ddp_overhead.json.

The hand-written loop wraps its model with torch's defaults, whose first
gradient bucket is 1 MiB; dist-train passes `strategy.bucket_cap_mb` (25),
which in torch sets every bucket, the first included. `--hand-bucket-cap-mb
25` gives the hand-written loop the same buckets.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def driver(args: argparse.Namespace) -> int:
    out = HERE / "results" / "ddp_overhead.json"
    out.parent.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.nproc),
           str(Path(__file__).resolve()), "--worker", "--rounds", str(args.rounds), "--samples", str(args.samples),
           "--out", str(out)]
    if args.hand_bucket_cap_mb:
        cmd += ["--hand-bucket-cap-mb", str(args.hand_bucket_cap_mb)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    subprocess.run(cmd, check=True, env=env, cwd=REPO)
    results = json.loads(out.read_text())
    print(f"\n{'model':<38}{'hand-written DDP':>18}{'dist-train':>14}{'ratio':>8}")
    for r in results["models"]:
        print(f"{r['model']:<38}{r['handwritten_samples_per_s']:>15,.0f}/s{r['dist_train_samples_per_s']:>11,.0f}/s"
              f"{r['ratio']:>8.3f}")
    print(f"(world size {results['world_size']}, global batch {results['global_batch_size']}, "
          f"{results['rounds']} rounds of one short epoch each, ratio = median of per-round ratios) -> {out}")
    return 0


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel

    from dist_train.config import load_config
    from dist_train.data.loader import InMemoryData
    from dist_train.data.sources import Split, Splits
    from dist_train.distributed import process_group
    from dist_train.env import DistEnv
    from dist_train.models import build_model
    from tests.helpers import build_trainer

    env = DistEnv.from_env(device="cpu")
    torch.set_num_threads(1)
    B = 128
    gen = torch.Generator().manual_seed(0)
    # Fashion-MNIST-shaped data (784 features, 10 classes): the compute is what matters here.
    X_all = torch.randn(args.samples, 784, generator=gen)
    Y_all = torch.randint(0, 10, (args.samples,), generator=gen)

    results = []
    with process_group(env, 120):
        # each round about half a second: the small model gets 4x the samples. The
        # third is a user's model (examples/residual_mlp/nets.py, with batch norm),
        # named by model.class_path on our side and built directly on the other.
        user = f"{REPO}/examples/residual_mlp/nets.py:ResidualMLP"
        cases = (("mlp 784-64-10", ["model.hidden_sizes=[64]"], args.samples),
                 ("mlp 784-512-512-10", ["model.hidden_sizes=[512,512]"], args.samples // 4),
                 ("user ResidualMLP (256, 2 blocks, BN)", [f"model.class_path={user}",
                                                          "model.init_args={width: 256, blocks: 2, dropout: 0.0}"],
                  args.samples // 4))
        for label, model_keys, n in cases:
            n -= n % B
            X, Y = X_all[:n], Y_all[:n]
            small = Split(X[:256], Y[:256])
            splits = Splits(Split(X, Y), small, small, (784,), 10)
            overrides = [*model_keys, "optim.name=adam", "optim.lr=0.001", f"train.global_batch_size={B}",
                         "dist.device=cpu", "data.normalize=none"]
            cfg = load_config(None, overrides)
            data = InMemoryData(splits, env, B, 1, cfg.train.seed, drop_last=False)
            trainer = build_trainer(cfg, env, data=data)

            torch.manual_seed(0)
            model = build_model(cfg.model, (784,), 10)
            buckets = {"bucket_cap_mb": args.hand_bucket_cap_mb} if args.hand_bucket_cap_mb else {}
            ddp = DistributedDataParallel(model, **buckets)
            opt = torch.optim.Adam(ddp.parameters(), lr=1e-3)
            b = B // env.world_size

            def handwritten_epoch(epoch: int) -> int:
                perm = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))
                for s in range(n // B):
                    idx = perm[s * B + env.rank * b: s * B + (env.rank + 1) * b]
                    loss = F.cross_entropy(ddp(X[idx]), Y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                return n

            def timed(fn, epoch):
                dist.barrier()
                start = time.perf_counter()
                samples = fn(epoch)
                dist.barrier()
                return samples / (time.perf_counter() - start)

            def dist_train_epoch(epoch: int) -> int:
                trainer.state.epoch, trainer.state.step_in_epoch = epoch, 0
                return trainer.train_epoch()[1]

            hand, ours = [], []
            timed(handwritten_epoch, 0)  # warm-up both paths
            timed(dist_train_epoch, 0)
            for r in range(args.rounds):
                pair = [("hand", handwritten_epoch), ("ours", dist_train_epoch)]
                for name, fn in pair if r % 2 == 0 else pair[::-1]:
                    (hand if name == "hand" else ours).append(timed(fn, r + 1))
            h = len(hand) / sum(1 / v for v in hand)  # all samples over all time (equal samples per round)
            o = len(ours) / sum(1 / v for v in ours)
            ratio = statistics.median(a / b for a, b in zip(ours, hand))
            results.append({"model": label, "samples_per_round": n,
                             "handwritten_samples_per_s": h, "dist_train_samples_per_s": o, "ratio": ratio,
                             "handwritten_rounds": hand, "dist_train_rounds": ours})
    if env.is_rank0:
        Path(args.out).write_text(json.dumps({
            "world_size": env.world_size, "global_batch_size": B, "rounds": args.rounds,
            "torch": torch.__version__, "threads_per_worker": 1, "hand_bucket_cap_mb": args.hand_bucket_cap_mb,
            "models": results}, indent=2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--samples", type=int, default=25_600,
                        help="samples per round for the small model (a quarter of it for the large one)")
    parser.add_argument("--hand-bucket-cap-mb", type=float, default=None,
                        help="give the hand-written loop's DDP this bucket_cap_mb (default: torch's own buckets)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return 0
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
