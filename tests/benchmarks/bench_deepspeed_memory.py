"""Benchmark: per-rank memory of the model states (parameters, gradients,
optimizer state) and steps per second, DDP against DeepSpeed ZeRO 0-3, for an
MLP of about 98M parameters on 2 CPU workers over gloo (Adam, fp32).

    python tests/benchmarks/bench_deepspeed_memory.py [--steps 4]

Each variant runs in 2 fresh worker processes (one thread each): the Trainer
is built, 1 warm-up step, then `--steps` timed optimizer steps (global batch
64) between barriers. Measured on each rank after the steps:
- tensor bytes: every distinct tensor storage alive in the process just
  before an optimizer step (gradients reduced, optimizer state alive), found
  through the garbage collector plus the parameters' gradients: the model
  states as each strategy holds them in tensors (ZeRO's flat partitions,
  fp32 groups and bucket buffers included; DDP's C++ gradient buckets are not
  visible), plus a few hundred KiB of data batches. Allocated is not touched:
  a buffer never written counts here but not in RSS. Storages larger than
  twice the whole model in fp32 are reported apart ("oversized"): ZeRO-3's reduce
  bucket, allocated at DeepSpeed's default reduce_bucket_size (5e8 elements,
  1.9 GiB in fp32) and on CPU never touched for a model this size;
- optimizer-state bytes: the tensors in the torch optimizer's `state`
  (Adam's exp_avg and exp_avg_sq; under ZeRO, of this rank's partition);
- peak RSS of the process (which on CPU also counts allocator caches and the
  temporaries of the step, so it shows ZeRO's savings less clearly).
Expected with Adam in fp32 (4 bytes a value; parameters 4, gradients 4,
optimizer state 8 bytes per parameter = 16) at N = 2 ranks: DDP 16 B/param;
ZeRO-1 4 + 4 + 8/2 = 12; ZeRO-2 4 + 4/2 + 8/2 = 10; ZeRO-3 16/2 = 8. The
paper's "4x" and "8x" are for mixed precision (2 + 2 + 12 bytes) at large N.
Results: tests/benchmarks/results/deepspeed_memory.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO))

HIDDEN = [9500, 9500]  # 784*9500 + 9500*9500 + 9500*10 weights: 97.8M parameters
VARIANTS = {"ddp": ["strategy.name=ddp"], **{f"zero-{s}": ["strategy.name=deepspeed", f"strategy.zero_stage={s}"]
                                            for s in range(4)}}
EXPECTED_BYTES_PER_PARAM = {"ddp": 16, "zero-0": 16, "zero-1": 12, "zero-2": 10, "zero-3": 8}


def live_tensor_bytes(model=None, oversized: int | None = None) -> tuple[int, int]:
    """(bytes of all distinct live storages, bytes of those larger than `oversized`)."""
    import torch

    gc.collect()
    seen, total, big = set(), 0, 0
    # a parameter's .grad has no Python object until asked for: gc alone misses it
    extra = [p.grad for p in model.parameters() if p.grad is not None] if model is not None else []
    for obj in [*extra, *gc.get_objects()]:
        try:
            if not isinstance(obj, torch.Tensor) or obj.device.type != "cpu":
                continue
            storage = obj.untyped_storage()
            key = storage.data_ptr()
        except Exception:  # noqa: BLE001 - objects half torn down, meta tensors, storages freed (FSDP's unsharded)
            continue
        if key and key not in seen:
            seen.add(key)
            total += storage.nbytes()
            if oversized is not None and storage.nbytes() > oversized:
                big += storage.nbytes()
    return total, big


def optimizer_state_bytes(optimizer) -> int:
    import torch

    inner = getattr(optimizer, "optimizer", optimizer)  # ZeRO wraps the torch optimizer
    return sum(t.numel() * t.element_size() for state in inner.state.values() for t in state.values()
               if isinstance(t, torch.Tensor) and t.dim() > 0)


def measure(env, overrides, steps):
    import torch
    import torch.distributed as dist

    from dist_train.config import load_config
    from tests.helpers import build_trainer

    cfg = load_config(None, ["data.source=synthetic", "data.num_samples=1000", "data.num_features=784",
                             "data.num_classes=10", f"model.hidden_sizes={HIDDEN}", "optim.name=adam",
                             "train.global_batch_size=64", "dist.device=cpu", "data.normalize=none", *overrides])
    trainer = build_trainer(cfg, env)
    params = sum(p.numel() for p in trainer.strategy.model.parameters())
    if cfg.strategy.name == "deepspeed" and cfg.strategy.zero_stage == 3:
        params = sum(p.ds_numel for p in trainer.strategy.model.parameters())
    batches = iter(trainer.data.train.epoch(0, 0))
    peak = {}
    plain_step = trainer.strategy.step

    def measured_step(clip):  # the peak of the step: gradients reduced, optimizer state alive
        if "bytes" not in peak:
            peak["bytes"], peak["oversized"] = live_tensor_bytes(trainer.strategy.model, 8 * params)
        return plain_step(clip)

    trainer.train_step(next(batches))  # warm-up: optimizer state and buffers exist from here
    trainer.strategy.step = measured_step
    trainer.train_step(next(batches))
    trainer.strategy.step = plain_step
    dist.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(next(batches))
    dist.barrier()
    seconds = (time.perf_counter() - start) / steps
    return {"params": params, "step_s": seconds, "tensor_bytes": peak["bytes"] - peak["oversized"], "oversized_buffer_bytes": peak["oversized"],
            "after_step_bytes": live_tensor_bytes(trainer.strategy.model)[0],
            "optimizer_state_bytes": optimizer_state_bytes(trainer.strategy.optimizer),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "torch": torch.__version__}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    from tests.multiproc import run_workers

    results = {}
    for name, overrides in VARIANTS.items():
        ranks = run_workers(measure, 2, overrides, args.steps, timeout_s=900, pg_timeout_s=600)
        results[name] = {"ranks": ranks}
        print(f"{name}: done", flush=True)
    params = results["ddp"]["ranks"][0]["params"]
    base = results["ddp"]["ranks"][0]
    print(f"\n{params / 1e6:.1f}M parameters, 2 workers, Adam fp32; per rank (rank 0; rank 1 within a few %):")
    print(f"{'':8}{'oversized':>10}{'tensors GiB':>12}{'B/param':>9}{'expected':>9}{'optim GiB':>11}{'vs ddp':>8}"
          f"{'RSS GiB':>9}{'steps/s':>9}{'vs ddp':>8}")
    for name, result in results.items():
        r = result["ranks"][0]
        per_param = r["tensor_bytes"] / params
        row = {"bytes_per_param": per_param, "expected_bytes_per_param": EXPECTED_BYTES_PER_PARAM[name],
               "optimizer_state_vs_ddp": base["optimizer_state_bytes"] / max(r["optimizer_state_bytes"], 1),
               "steps_per_s": 1 / r["step_s"], "speed_vs_ddp": base["step_s"] / r["step_s"]}
        result.update(row)
        print(f"{name:8}{r['oversized_buffer_bytes'] / 2**30:>10.2f}{r['tensor_bytes'] / 2**30:>12.2f}{per_param:>9.1f}{row['expected_bytes_per_param']:>9}"
              f"{r['optimizer_state_bytes'] / 2**30:>11.2f}{row['optimizer_state_vs_ddp']:>7.2f}x"
              f"{r['peak_rss_bytes'] / 2**30:>9.2f}{row['steps_per_s']:>9.3f}{row['speed_vs_ddp']:>7.2f}x")
    out = HERE / "results" / "deepspeed_memory.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"params": params, "variants": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
