"""Benchmark: checkpoint save and load time, size on disk, and the training
stall a save causes, for the Fashion-MNIST MLP and a model of about 100M
parameters (Adam, so the optimizer state is twice the weights).

    python tests/benchmarks/bench_checkpoint.py

One process, one thread. For each model: the step time; the stall, the time
`Trainer.save_checkpoint` blocks training (it copies the state in memory and
hands the writing to a background thread); the step taken while that write
goes on; the whole save (until the background write and manifest are done);
the plain write of the same objects to new files (`torch.save` + fsync, no
hashing, manifest or retention) for comparison; and `Trainer.restore` from
the checkpoint. Medians of 3. Results:
tests/benchmarks/results/checkpoint.json.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO))

MODELS = {"fashion-mnist mlp 784-256-128-10": [256, 128], "mlp 784-8192-8192-4096-10 (~107M)": [8192, 8192, 4096]}


def main() -> int:
    from dist_train.checkpoint import find_latest_valid
    from dist_train.config import load_config
    from dist_train.data.loader import InMemoryData
    from dist_train.data.sources import Split, Splits
    from dist_train.env import DistEnv
    from dist_train.models import count_parameters
    from tests.helpers import build_trainer

    torch.set_num_threads(1)
    env = DistEnv()
    x, y = torch.randn(1024, 1, 28, 28), torch.randint(0, 10, (1024,))
    split = Split(x, y)
    results = []
    for name, hidden in MODELS.items():
        root = Path(tempfile.mkdtemp(dir=REPO / "tests" / "benchmarks"))
        cfg = load_config(None, [f"model.hidden_sizes={hidden}", "train.global_batch_size=128", "dist.device=cpu",
                                 f"run.dir={root}", "checkpoint.keep_last=1", "checkpoint.keep_best=false"])
        data = InMemoryData(Splits(split, split, split, (1, 28, 28), 10), env, 128, 1, 0, False)
        trainer = build_trainer(cfg, env, data=data, run_dir=root)
        steps = iter(trainer.data.train.epoch(0))

        def one_step():
            start = time.perf_counter()
            trainer.train_step(next(steps))
            trainer.state.global_step += 1
            return time.perf_counter() - start

        one_step()  # warm-up; creates the optimizer state
        plain, stalled, writes, loads, during, saves = [], [], [], [], [], []
        for i in range(3):
            plain.append(one_step())
            start = time.perf_counter()
            trainer.save_checkpoint()  # training waits exactly this long (the in-memory copy)
            stalled.append(time.perf_counter() - start)
            during.append(one_step())  # a step while the save is written in the background
            trainer.wait_for_checkpoint()
            saves.append(time.perf_counter() - start)
            # the floor: the same objects written to new files, no hashing, manifest or retention
            start = time.perf_counter()
            for part, obj in (("model", trainer.strategy.model.state_dict()),
                              ("optimizer", trainer.strategy.optimizer.state_dict())):
                with open(root / f"plain-{i}-{part}.pt", "wb") as fh:
                    torch.save(obj, fh)
                    fh.flush()
                    os.fsync(fh.fileno())
            writes.append(time.perf_counter() - start)
            for f in root.glob("plain-*.pt"):
                f.unlink()
            info = find_latest_valid(root)
            start = time.perf_counter()
            trainer.restore(info)
            loads.append(time.perf_counter() - start)
        info = find_latest_valid(root)
        size = sum(f.stat().st_size for f in info.path.iterdir())
        step, stall = statistics.median(plain), statistics.median(stalled)
        results.append({"model": name, "parameters": count_parameters(trainer.strategy.model),
                        "checkpoint_bytes": size, "step_s": step, "stall_s": stall,
                        "plain_write_s": statistics.median(writes), "load_s": statistics.median(loads),
                        "step_during_save_s": statistics.median(during), "whole_save_s": statistics.median(saves)})
        shutil.rmtree(root)
        del trainer
    out = HERE / "results" / "checkpoint.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\n{'model':<36}{'params':>12}{'on disk':>11}{'step':>9}{'save stall':>12}{'plain write':>13}"
          f"{'whole save':>12}{'step during':>13}{'load':>9}")
    for r in results:
        print(f"{r['model']:<36}{r['parameters']:>12,}{r['checkpoint_bytes'] / 2**20:>8.1f}MiB{r['step_s']:>8.3f}s"
              f"{r['stall_s']:>11.3f}s{r['plain_write_s']:>12.3f}s{r['whole_save_s']:>11.3f}s"
              f"{r['step_during_save_s']:>12.3f}s{r['load_s']:>8.3f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
