"""Benchmark: what the stall watchdog and the collective check cost per step,
on both Fashion-MNIST MLPs (784-64-10 and 784-256-128-10), 2 workers over gloo.

    python tests/benchmarks/bench_watchdog.py [--rounds 21]

One torchrun job, one intra-op thread per worker, Fashion-MNIST-shaped random
inputs with random labels in memory, Adam, global batch 128. In each worker
three trainers of the same model train short epochs (about half a second)
in turn, the order rotating every round, each epoch timed between two
barriers: the watchdog off, the watchdog on (its thread running, a beat per
step), and the watchdog on with `dist.check_collectives` (every collective
checked against the other rank's first, DDP's gradient all-reduce through a
checking hook). The cost is the median of the per-round ratios against the
watchdog off. Results: tests/benchmarks/results/watchdog.json."""

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
    out = HERE / "results" / "watchdog.json"
    out.parent.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(Path(__file__).resolve()), "--worker", "--rounds", str(args.rounds), "--out", str(out)]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}, cwd=REPO)
    results = json.loads(out.read_text())
    results["beat_ns"] = beat_cost()
    out.write_text(json.dumps(results, indent=2))
    print(f"\none beat (what the loop adds per step): {results['beat_ns']:.0f} ns")
    print(f"{'model':<22}{'off':>12}{'watchdog':>12}{'ratio':>8}{'+check':>12}{'ratio':>8}")
    for r in results["models"]:
        print(f"{r['model']:<22}{r['off']:>10,.0f}/s{r['watchdog']:>10,.0f}/s{r['watchdog_ratio']:>8.3f}"
              f"{r['checked']:>10,.0f}/s{r['checked_ratio']:>8.3f}")
    steps = ", ".join(f"{r['model']} {r['step_ms_off']:.3f} ms" for r in results["models"])
    print(f"(2 workers, global batch 128, {results['rounds']} rounds; ratio = median of per-round ratios against "
          f"the watchdog off; a step with it off: {steps}) -> {out}")
    return 0


def beat_cost() -> float:
    """Nanoseconds the loop pays per step for the watchdog (one `beat()`), in this
    process, its thread running: the median of 9 runs of a million beats."""
    from dist_train.config import DistConfig
    from dist_train.env import DistEnv
    from dist_train.watchdog import Watchdog

    w = Watchdog(DistConfig(hang_timeout_s=60), False, DistEnv(), Path("/tmp/bench-watchdog"))
    runs = []
    for _ in range(9):
        start = time.perf_counter()
        for _ in range(1_000_000):
            w.beat()
        runs.append((time.perf_counter() - start) * 1000)  # ns per beat: seconds / 1e6 * 1e9
    w.stop()
    return statistics.median(runs)


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    from dist_train import collective_check
    from dist_train.config import load_config
    from dist_train.data.loader import InMemoryData
    from dist_train.data.sources import Split, Splits
    from dist_train.distributed import process_group
    from dist_train.env import DistEnv
    from dist_train.trainer import Trainer
    from tests.helpers import build_trainer
    from dist_train.watchdog import Watchdog

    env = DistEnv.from_env(device="cpu")
    torch.set_num_threads(1)
    B = 128
    gen = torch.Generator().manual_seed(0)
    X_all, Y_all = torch.randn(25_600, 784, generator=gen), torch.randint(0, 10, (25_600,), generator=gen)
    results = []
    with process_group(env, 120):
        for label, sizes, n in (("mlp 784-64-10", "[64]", 25_600), ("mlp 784-256-128-10", "[256,128]", 6_400)):
            X, Y = X_all[:n], Y_all[:n]
            small = Split(X[:256], Y[:256])
            splits = Splits(Split(X, Y), small, small, (784,), 10)
            cfg = load_config(None, [f"model.hidden_sizes={sizes}", "optim.name=adam", f"train.global_batch_size={B}",
                                     "dist.device=cpu", "data.normalize=none", "dist.hang_timeout_s=60"])

            def make(watchdog: bool, checked: bool) -> Trainer:
                if checked:
                    collective_check.start(env.rank, env.world_size)  # before DDP: it registers the checking hook
                data = InMemoryData(splits, env, B, 1, cfg.train.seed, drop_last=False)
                wd = Watchdog(cfg.dist, False, env, Path("/tmp/bench-watchdog")) if watchdog else None
                return build_trainer(cfg, env, data=data, watchdog=wd)

            trainers = {"off": make(False, False), "watchdog": make(True, False)}
            trainers["checked"] = make(True, True)  # from here on torch.distributed's collectives are checked

            def epoch(trainer: Trainer, e: int) -> float:
                trainer.state.epoch, trainer.state.step_in_epoch = e, 0
                dist.barrier()
                start = time.perf_counter()
                samples = trainer.train_epoch()[1]
                dist.barrier()
                return samples / (time.perf_counter() - start)

            rates: dict[str, list[float]] = {name: [] for name in trainers}
            for name, trainer in trainers.items():
                epoch(trainer, 0)  # warm-up
            names = list(trainers)
            for r in range(args.rounds):
                for name in names[r % 3:] + names[:r % 3]:
                    rates[name].append(epoch(trainers[name], r + 1))
            for trainer in trainers.values():
                trainer.watchdog.stop()
            collective_check.stop()
            overall = {name: len(v) / sum(1 / x for x in v) for name, v in rates.items()}
            results.append({"model": label, **overall, "step_ms_off": 1000 * B / overall["off"],
                            "watchdog_ratio": statistics.median(a / b for a, b in zip(rates["watchdog"], rates["off"])),
                            "checked_ratio": statistics.median(a / b for a, b in zip(rates["checked"], rates["off"])),
                            "rounds": rates})
    if env.is_rank0:
        Path(args.out).write_text(json.dumps({"rounds": args.rounds, "torch": torch.__version__, "models": results},
                                             indent=2))


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
