"""Benchmark: synchronized batch norm against plain (per-worker) batch norm on
2 CPU workers over gloo, forward + backward of one layer, in one run.

    python tests/benchmarks/bench_sync_batchnorm.py [--rounds 21]

Activation sizes are those of a small CNN and a wide MLP layer. Rounds of 20
steps alternate between the two layers (order flipped every round); each step
is forward, a backward with a fixed upstream gradient, timed between barriers
around the round. The figure is the median per-step time of each, and the
overhead is their difference. Two more rows split the overhead: the same
layer with nothing to communicate (its compute), and the layer's two bare
collectives on vectors of the same size, an all-gather (forward) and an
all-reduce (backward): the communication floor on this machine. The
collectives each pass makes are counted (spies on torch.distributed.all_gather
and all_reduce) to check one per layer per pass.
Results go to tests/benchmarks/results/sync_batchnorm.json.
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
SHAPES = {"BatchNorm2d (32, 64, 16, 16) per worker": (32, 64, 16, 16),
          "BatchNorm1d (256, 1024) per worker": (256, 1024)}


def driver(args: argparse.Namespace) -> int:
    out = HERE / "results" / "sync_batchnorm.json"
    out.parent.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                    str(Path(__file__).resolve()), "--worker", "--rounds", str(args.rounds), "--out", str(out)],
                   check=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    res = json.loads(out.read_text())
    print(f"\n{'layer (forward+backward per step)':<42}{'plain':>10}{'synced':>10}{'overhead':>10}"
          f"{'sync, no comm':>15}{'bare collectives':>18}{'collectives fwd/bwd':>21}")
    for r in res["layers"]:
        print(f"{r['layer']:<42}{r['plain_ms']:>8.3f}ms{r['sync_ms']:>8.3f}ms{r['overhead_ms']:>8.3f}ms"
              f"{r['sync_compute_only_ms']:>13.3f}ms{r['bare_collectives_ms']:>16.3f}ms"
              f"{r['collectives_forward']:>17}/{r['collectives_backward']}")
    return 0


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    from torch import nn

    from dist_train.distributed import process_group
    from dist_train.env import DistEnv
    from dist_train.sync_batchnorm import SyncBatchNorm

    env = DistEnv.from_env(device="cpu")
    torch.set_num_threads(1)
    layers = []
    with process_group(env, 120):
        for name, shape in SHAPES.items():
            channels = shape[1]
            plain = (nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm1d)(channels)
            synced = SyncBatchNorm(channels, world_size=env.world_size)
            x = torch.randn(*shape, requires_grad=True)
            g = torch.randn(*shape)

            def step(layer):
                y = layer(x)
                if y is not None:
                    y.backward(g)
                x.grad = None

            def timed_round(layer, n=20):
                dist.barrier()
                start = time.perf_counter()
                for _ in range(n):
                    step(layer)
                dist.barrier()
                return (time.perf_counter() - start) / n * 1e3

            # count the collectives of one synchronized step, forward and backward apart
            real, calls = {op: getattr(dist, op) for op in ("all_gather", "all_reduce")}, {"n": 0}

            def spy(op):
                def collective(*a, **k):
                    calls["n"] += 1
                    return real[op](*a, **k)
                return collective

            for op in real:
                setattr(dist, op, spy(op))
            y = synced(x)
            forward_calls = calls["n"]
            y.backward(g)
            backward_calls = calls["n"] - forward_calls
            for op, function in real.items():
                setattr(dist, op, function)
            x.grad = None

            # the communication floor: the forward's all-gather and the backward's all-reduce, bare
            stats = torch.zeros(2 * channels + 1, dtype=torch.float64)
            gathered = [torch.empty_like(stats) for _ in range(env.world_size)]
            sums = torch.zeros(2 * channels, dtype=torch.float64)

            class BareCollectives:
                @staticmethod
                def __call__(_):
                    dist.all_gather(gathered, stats)
                    dist.all_reduce(sums)

            # the compute alone: the same layer with nothing to communicate
            local = SyncBatchNorm(channels, world_size=1)
            runs = {"plain": (plain, []), "sync": (synced, []), "sync_compute_only": (local, []),
                    "bare_collectives": (BareCollectives(), [])}
            for layer, _ in runs.values():
                timed_round(layer)  # warm-up
            order = list(runs)
            for r in range(args.rounds):
                for key in order if r % 2 == 0 else order[::-1]:
                    layer, sink = runs[key]
                    sink.append(timed_round(layer))
            med = {key: statistics.median(sink) for key, (_, sink) in runs.items()}
            p, s = med["plain"], med["sync"]
            layers.append({"layer": name, "plain_ms": p, "sync_ms": s, "overhead_ms": s - p,
                           "overhead_pct": 100 * (s - p) / p, "sync_compute_only_ms": med["sync_compute_only"],
                           "bare_collectives_ms": med["bare_collectives"], "collectives_forward": forward_calls,
                           "collectives_backward": backward_calls,
                           "all_gather_bytes_forward": 8 * (2 * channels + 1),
                           "all_reduce_bytes_backward": 8 * 2 * channels})
    if env.is_rank0:
        Path(args.out).write_text(json.dumps({"world_size": env.world_size, "rounds": args.rounds,
                                              "steps_per_round": 20, "torch": torch.__version__,
                                              "layers": layers}, indent=2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return 0
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
