"""Benchmark: training with W&B (offline) and the progress bar on, against both
off, in one run.

    python tests/benchmarks/bench_logging_overhead.py [--rounds 15]

One process, one thread, the quickstart MLP on Fashion-MNIST-shaped data
(784 features; 200 steps of batch 64 per epoch), log every 50 steps, the
LR recorded where it changes: once with a constant LR (the default), every
step under a per-step cosine schedule, and (a third variant) cosine with the
LR only on the periodic train records, and a control: a second trainer with
logging off, whose ratio to "off" is the noise floor. Rounds alternate the trackers (order
flipped each round); each times one `Trainer.train_epoch`. The figure is the
median of the per-round ratios of samples/s (logging on / off). The progress
bar is forced on and drawn to /dev/null (a terminal is not needed to pay its
cost).
Results: tests/benchmarks/results/logging_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU path")
    args = parser.parse_args()
    import torch

    from dist_train.config import load_config, to_dict
    from dist_train.data.loader import InMemoryData
    from dist_train.data.sources import Split, Splits
    from dist_train.env import DistEnv
    from dist_train.tracking import Progress, Tracker, WandbSink
    from tests.helpers import build_trainer

    torch.set_num_threads(1)
    env = DistEnv.from_env({}, device=args.device)
    n = 64 * 200
    x, y = torch.randn(n, 784), torch.randint(0, 10, (n,))
    split = Split(x, y)
    root = Path(tempfile.mkdtemp())
    base = ["model.hidden_sizes=[64]", "train.global_batch_size=64", f"dist.device={args.device}", "train.log_every_steps=50",
            "wandb.mode=offline", f"run.dir={root}"]
    devnull = open("/dev/null", "w")
    trainers, trackers = {}, []
    variants = (("on (constant LR: one lr record)", [], True),
                ("on, cosine: an lr record every step", ["schedule.name=cosine"], True),
                ("on, lr only with train records", ["train.lr_every_step=false", "schedule.name=cosine"], True),
                ("off, a second copy (control)", [], False),
                ("off", [], False))
    for index, (name, extra, logging) in enumerate(variants):
        cfg = load_config(None, base + extra)
        run_dir = root / f"variant{index}"
        run_dir.mkdir(exist_ok=True)
        if logging:
            tracker = Tracker(run_dir, console=devnull, sink=WandbSink(cfg.wandb, run_dir, to_dict(cfg), None), progress=True)
            tracker.progress = Progress(devnull)
        else:
            tracker = Tracker(None, console=None)
        trackers.append(tracker)
        data = InMemoryData(Splits(split, split, split, (784,), 10), env, 64, 1, 0, False)
        trainers[name] = build_trainer(cfg, env, data=data, tracker=tracker)
    rates: dict[str, list[float]] = {name: [] for name in trainers}
    for name in trainers:  # warm-up
        trainers[name].train_epoch()
        trainers[name].step_in_epoch = 0
    for r in range(args.rounds):
        for name in (list(trainers) if r % 2 == 0 else list(trainers)[::-1]):
            trainer = trainers[name]
            trainer.state.epoch += 1
            start = time.perf_counter()
            samples = trainer.train_epoch()[1]
            rates[name].append(samples / (time.perf_counter() - start))
            trainer.state.step_in_epoch = 0
    for tracker in trackers:
        tracker.close()
    spread = statistics.median(abs(a / b - 1) for a, b in zip(rates["off"][1:], rates["off"][:-1]))
    result = {"rounds": args.rounds, "round_to_round_noise_off": spread, "samples_per_s": {},
              "ratio_to_off": {}, "cpu": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
    print(f"\n{'W&B offline + progress bar':<48}{'samples/s':>12}{'vs off':>9}")
    for name, values in rates.items():
        ratio = statistics.median(a / b for a, b in zip(values, rates["off"]))
        result["samples_per_s"][name] = statistics.median(values)
        result["ratio_to_off"][name] = ratio
        print(f"{name:<48}{statistics.median(values):>12,.0f}{ratio:>9.3f}")
    print(f"(round-to-round noise with logging off: {spread:.1%}; the control, an identical trainer with "
          f"logging off, measures how far two equal variants land apart)")
    result["device"] = args.device
    out = HERE / "results" / f"logging_overhead{'' if args.device == 'cpu' else '_' + args.device}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
