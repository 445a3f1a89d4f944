"""Benchmark: what sharding saves and costs. Per-rank memory of parameters,
gradients and optimizer state for the ~98M-parameter MLP of
bench_deepspeed_memory.py under DDP, fsdp and DeepSpeed ZeRO-3 at 1 and 2
workers; and fsdp's step time against DDP on both Fashion-MNIST MLPs.

    python tests/benchmarks/bench_sharding.py [--steps 2] [--rounds 15] [--parts speed,drift,memory]

Memory: each variant in fresh worker processes (one thread each, gloo, Adam,
fp32, global batch 64): the Trainer is built, one warm-up step, then just
before the next optimizer step (gradients reduced, optimizer state alive)
each rank counts the bytes it holds in its own tensors: its parameters (for
fsdp the local shards of the DTensors; for ZeRO-3 its partition), their
gradients, and the optimizer's state; and the live tensor bytes and peak RSS
of the process as bench_deepspeed_memory.py measures them. Expected in fp32
with Adam (parameters 4 + gradients 4 + optimizer 8 bytes per parameter):
16 B/param for DDP at any N; 16/N for fsdp and ZeRO-3.

Speed: one torchrun job of 2 workers; in each, a DDP trainer and an fsdp
trainer of the same model train short epochs in turn (order flipping each
round, timed between barriers), random Fashion-MNIST-shaped data in memory,
Adam, global batch 128. Ratio: median of per-round ratios (fsdp / DDP
samples/s).

Drift: fsdp on 2 workers, and on 2 workers stopped at step 170 and resumed
on 3, against one process, after 350 steps (Adam): the largest difference of
any weight. Results: tests/benchmarks/results/sharding.json."""

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
sys.path.insert(0, str(REPO))

VARIANTS = {"ddp": ["strategy.name=ddp"], "fsdp": ["strategy.name=fsdp"],
            "zero-3": ["strategy.name=deepspeed", "strategy.zero_stage=3"]}


def local_bytes(tensors) -> int:
    """Bytes of the tensors as this rank holds them (a DTensor's local shard)."""
    total = 0
    for t in tensors:
        if t is None:
            continue
        t = t.to_local() if hasattr(t, "to_local") else t
        if getattr(t, "ds_tensor", None) is not None:  # ZeRO-3: this rank's partition
            t = t.ds_tensor
        total += t.numel() * t.element_size()
    return total


def optimizer_bytes(optimizer) -> int:
    import torch

    inner = getattr(optimizer, "optimizer", optimizer)
    return local_bytes(t for state in inner.state.values() for t in state.values()
                       if isinstance(t, torch.Tensor) and t.dim() > 0)


def measure(env, overrides, steps):
    import resource

    import torch.distributed as dist

    from dist_train.config import load_config
    from dist_train.distributed import process_group
    from dist_train.trainer import Trainer
    from tests.helpers import build_trainer
    from tests.benchmarks.bench_deepspeed_memory import HIDDEN, live_tensor_bytes

    cfg = load_config(None, ["data.source=synthetic", "data.num_samples=1000", "data.num_features=784",
                             "data.num_classes=10", f"model.hidden_sizes={HIDDEN}", "optim.name=adam",
                             "train.global_batch_size=64", "dist.device=cpu", "data.normalize=none", *overrides])
    with process_group(env, 900, group_of_one=True):
        trainer = build_trainer(cfg, env)
        model = trainer.strategy.model
        params = sum(getattr(p, "ds_numel", None) or (p.full_tensor().numel() if hasattr(p, "full_tensor")
                                                         else p.numel()) for p in model.parameters())
        batches = iter(trainer.data.train.epoch(0, 0))
        peak = {}
        plain_step = trainer.strategy.step

        def measured_step(clip):
            if not peak:
                grads = [p.grad for p in model.parameters()]
                if cfg.strategy.name == "deepspeed":  # ZeRO-3's gradients live in its partitioned flat buffers
                    grads = [g for g in getattr(trainer.strategy.optimizer, "fp32_partitioned_groups_flat", [])]
                peak.update(params=local_bytes(model.parameters()), grads=local_bytes(grads),
                            optimizer=optimizer_bytes(trainer.strategy.optimizer),
                            live=live_tensor_bytes(model, 8 * params)[0])
            return plain_step(clip)

        trainer.train_step(next(batches))  # warm-up: the optimizer state exists from here
        trainer.strategy.step = measured_step
        trainer.train_step(next(batches))
        trainer.strategy.step = plain_step
        if dist.is_initialized():
            dist.barrier()
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(next(batches))
        if dist.is_initialized():
            dist.barrier()
        seconds = (time.perf_counter() - start) / steps
    return {"params": params, "step_s": seconds, **{f"{k}_bytes": v for k, v in peak.items()},
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def memory(steps: int) -> dict:
    from tests.multiproc import run_workers

    found = {}
    for name, overrides in VARIANTS.items():
        for workers in (1, 2):
            ranks = run_workers(measure, workers, overrides, steps, timeout_s=1800, pg_timeout_s=900)
            found[f"{name}@{workers}"] = ranks
            r = ranks[0]
            states = r["params_bytes"] + r["grads_bytes"] + r["optimizer_bytes"]
            print(f"{name:7} {workers} worker(s): params {r['params_bytes'] / 2**30:5.2f} GiB, grads "
                  f"{r['grads_bytes'] / 2**30:5.2f}, optimizer {r['optimizer_bytes'] / 2**30:5.2f} = "
                  f"{states / r['params']:5.2f} B/param (expected {16 if name == 'ddp' else 16 / workers:g}); live "
                  f"tensors {r['live_bytes'] / 2**30:5.2f} GiB, peak RSS {r['peak_rss_bytes'] / 2**30:5.2f} GiB, "
                  f"{r['step_s']:.2f} s/step", flush=True)
    return found


def speed_worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    from dist_train.config import load_config
    from dist_train.data.loader import InMemoryData
    from dist_train.data.sources import Split, Splits
    from dist_train.distributed import process_group
    from dist_train.env import DistEnv
    from dist_train.trainer import Trainer

    env = DistEnv.from_env(device="cpu")
    torch.set_num_threads(1)
    B = 128
    gen = torch.Generator().manual_seed(0)
    X_all, Y_all = torch.randn(12_800, 784, generator=gen), torch.randint(0, 10, (12_800,), generator=gen)
    results = []
    with process_group(env, 300):
        for label, sizes, n in (("mlp 784-64-10", "[64]", 12_800), ("mlp 784-256-128-10", "[256,128]", 6_400)):
            X, Y = X_all[:n], Y_all[:n]
            small = Split(X[:256], Y[:256])
            splits = Splits(Split(X, Y), small, small, (784,), 10)
            trainers = {}
            for strategy in ("ddp", "fsdp"):
                cfg = load_config(None, [f"model.hidden_sizes={sizes}", "optim.name=adam", f"train.global_batch_size={B}",
                                         "dist.device=cpu", "data.normalize=none", f"strategy.name={strategy}"])
                trainers[strategy] = build_trainer(cfg, env, data=InMemoryData(splits, env, B, 1, 0, drop_last=False))

            def epoch(trainer: Trainer, e: int) -> float:
                trainer.state.epoch, trainer.state.step_in_epoch = e, 0
                dist.barrier()
                start = time.perf_counter()
                samples = trainer.train_epoch()[1]
                dist.barrier()
                return samples / (time.perf_counter() - start)

            rates = {name: [] for name in trainers}
            for trainer in trainers.values():
                epoch(trainer, 0)
            for r in range(args.rounds):
                for name in (["ddp", "fsdp"] if r % 2 == 0 else ["fsdp", "ddp"]):
                    rates[name].append(epoch(trainers[name], r + 1))
            overall = {name: len(v) / sum(1 / x for x in v) for name, v in rates.items()}
            results.append({"model": label, **overall, "ratio": statistics.median(f / d for f, d in
                                                                                 zip(rates["fsdp"], rates["ddp"]))})
    if env.is_rank0:
        Path(args.out).write_text(json.dumps(results, indent=2))


def speed(rounds: int) -> list:
    out = HERE / "results" / "sharding_speed.json"
    out.parent.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                    str(Path(__file__).resolve()), "--worker", "--rounds", str(rounds), "--out", str(out)],
                   check=True, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}, cwd=REPO)
    results = json.loads(out.read_text())
    for r in results:
        print(f"{r['model']:<22} ddp {r['ddp']:>8,.0f} samples/s  fsdp {r['fsdp']:>8,.0f} samples/s  "
              f"ratio {r['ratio']:.3f}", flush=True)
    return results


DRIFT = ["data.source=synthetic", "data.num_samples=2400", "data.num_features=12", "data.num_classes=3",
         "model.hidden_sizes=[32,16]", "optim.name=adam", "optim.lr=0.003", "train.global_batch_size=48",
         "train.epochs=10", "dist.device=cpu", "wandb.mode=disabled", "run.progress=false", "strategy.name=fsdp",
         "train.stop_check_every_steps=1", "checkpoint.every_steps=50"]


def drift_job(env, run_dir, stop_at):
    from dist_train.config import load_config
    from dist_train.run import run
    from tests.helpers import sigterm_at

    cfg = load_config(None, [*DRIFT, f"run.dir={run_dir}"])
    return run(cfg, env, sigterm_at(stop_at)) if stop_at else run(cfg, env)


def drift() -> dict:
    """How far fsdp on 2 workers, and 2 resumed on 3, end from one process after
    several hundred steps (float rounding adding up: reductions in another order)."""
    import tempfile

    import torch

    from dist_train.checkpoint import find_latest_valid
    from dist_train.env import DistEnv
    from tests.multiproc import run_workers

    root = Path(tempfile.mkdtemp(prefix="bench-drift-"))
    drift_job(DistEnv(), root / "one", 0)
    run_workers(drift_job, 2, str(root / "two"), 0, timeout_s=1800)
    run_workers(drift_job, 2, str(root / "resized"), 170, timeout_s=1800)
    run_workers(drift_job, 3, str(root / "resized"), 0, timeout_s=1800)

    def weights(name):
        info = find_latest_valid(root / name)
        return info.global_step, torch.load(info.path / "model.pt", weights_only=True)

    steps, one = weights("one")
    found = {"steps": steps}
    for name in ("two", "resized"):
        _, other = weights(name)
        found[name] = max(float((one[k] - other[k]).abs().max()) for k in one)
    print(f"after {steps} steps, max |weight difference| to one process: 2 workers {found['two']:.3g}; 2 workers "
          f"stopped at step 170 and resumed on 3 {found['resized']:.3g}", flush=True)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--parts", default="speed,drift,memory")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        speed_worker(args)
        return 0
    out = HERE / "results" / "sharding.json"
    found = json.loads(out.read_text()) if out.is_file() else {}  # the parts not run this time stay as they were
    if "speed" in args.parts:
        found["speed"] = speed(args.rounds)
    if "memory" in args.parts:
        found["memory"] = memory(args.steps)
    if "drift" in args.parts:
        found["drift"] = drift()
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(found, indent=2))
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
