"""Benchmark for a machine with one CUDA GPU: dist-train's training loop
against hand-written torch loops, in one process.

    python tests/benchmarks/bench_gpu.py [--data data/prepared/fashion-mnist] [--rounds 11]
    python tests/benchmarks/bench_gpu.py --device cpu --rounds 3     # a smoke run of the script itself
    python tests/benchmarks/bench_gpu.py --device cpu --parts compile  # compile's start-up on a CPU

1. Throughput, fp32 and bf16: the Fashion-MNIST MLP (784-256-128-10, global
   batch 512) trained by `Trainer.train_epoch` with `data.cache: device`
   against a hand-written loop over the same tensors on the device (index
   with a permutation, forward under autocast for bf16, cross_entropy,
   zero_grad, backward, fused Adam step), epochs alternating; goal >= 0.98.
2. Time to 0.89 validation accuracy with configs/fashion_mnist_mlp.yaml's
   recipe: dist-train (data.cache: device) against the same recipe fed by a
   plain DataLoader (pinned memory, one worker) and with the data on the
   device; the goal is at least the on-device loop's pace, and under 2 s of
   training.
3. train.compile: seconds until the first epoch ends with and without it,
   and the steady epoch time. Inductor keeps what it built in
   TORCHINDUCTOR_CACHE_DIR (default /tmp/torchinductor_$USER): a fresh
   directory measures a first run, a second run with the same one the next.
The GPU's name is recorded with every figure in tests/benchmarks/results/gpu.json."""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def trainer_for(data_path: str, device: str, overrides: list[str]):
    from dist_train.config import load_config
    from dist_train.env import DistEnv
    from tests.helpers import build_trainer

    cfg = load_config(REPO / "configs/fashion_mnist_mlp.yaml",
                      [f"data.path={data_path}", "data.cache=device", f"dist.device={device}", "wandb.mode=disabled",
                       *overrides])
    return build_trainer(cfg, DistEnv.from_env({}, device=device)), cfg


def hand_loop(trainer, cfg, device: str, precision: str, fused: bool = True):
    """The same model's architecture and the same tensors, trained by hand."""
    from dist_train.models import build_model

    data = trainer.data.splits
    x, y = data.train.inputs.to(device), data.train.targets.to(device)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.input_shape, data.num_classes).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                            fused=fused and device.startswith("cuda"))
    batch, n = cfg.train.global_batch_size, len(y)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def epoch(e: int) -> int:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(e)).to(device)
        model.train()
        for s in range(math.ceil(n / batch)):
            idx = perm[s * batch:(s + 1) * batch]
            with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
                out = model(x.index_select(0, idx))
            loss = F.cross_entropy(out.float(), y.index_select(0, idx))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return n
    return epoch, model


def throughput(data_path: str, device: str, rounds: int) -> dict:
    found = {}
    for precision in ("fp32", "bf16"):
        trainer, cfg = trainer_for(data_path, device, [f"train.precision={precision}", "train.global_batch_size=512",
                                                       "model.dropout=0.0"])
        hand, _ = hand_loop(trainer, cfg, device, precision)

        def ours(e: int) -> int:
            trainer.state.epoch, trainer.state.step_in_epoch = e, 0
            return trainer.train_epoch()[1]

        rates: dict[str, list[float]] = {"ours": [], "hand": []}
        for r in range(rounds + 1):
            pair = [("ours", ours), ("hand", hand)]
            for name, fn in pair if r % 2 == 0 else pair[::-1]:
                sync(device)
                start = time.perf_counter()
                samples = fn(r)
                sync(device)
                if r:  # round 0 warms up both
                    rates[name].append(samples / (time.perf_counter() - start))
        found[precision] = {"dist_train_samples_per_s": statistics.median(rates["ours"]),
                            "hand_samples_per_s": statistics.median(rates["hand"]),
                            "ratio": statistics.median(a / b for a, b in zip(rates["ours"], rates["hand"]))}
        print(f"throughput {precision}: {found[precision]}", flush=True)
    return found


def time_to_accuracy(data_path: str, device: str, target: float = 0.89) -> dict:
    from torch.utils.data import DataLoader, TensorDataset

    from dist_train.data.loader import Batch
    from dist_train.metrics import evaluate

    found = {}
    trainer, cfg = trainer_for(data_path, device, [])
    start = time.perf_counter()
    reached = None
    while trainer.state.epoch < cfg.train.epochs:
        trainer.train_epoch()
        trainer.end_of_epoch(0, 1.0)
        sync(device)
        if trainer.state.last_val["val_accuracy"] >= target:
            reached = (time.perf_counter() - start, trainer.state.epoch)
            break
    found["dist-train, data.cache=device"] = reached

    splits = trainer.data.splits
    for name, on_device in (("hand-written, plain DataLoader", False), ("hand-written, data on the device", True)):
        epoch_fn, model = hand_loop(trainer, cfg, device, "fp32")
        loader = DataLoader(TensorDataset(splits.train.inputs.cpu(), splits.train.targets.cpu()),
                            batch_size=cfg.train.global_batch_size, shuffle=True, num_workers=1,
                            pin_memory=device.startswith("cuda"))
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        total = cfg.train.epochs * len(loader)
        step, reached, start = 0, None, time.perf_counter()
        for e in range(cfg.train.epochs):
            if on_device:
                epoch_fn(e)
            else:
                model.train()
                for x, y in loader:
                    for g in opt.param_groups:
                        g["lr"] = cfg.optim.lr * 0.5 * (1 + math.cos(math.pi * step / total))
                    loss = F.cross_entropy(model(x.to(device, non_blocking=True)), y.to(device, non_blocking=True))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    step += 1
            val = evaluate(model, [Batch(splits.val.inputs.to(device), splits.val.targets.to(device))],
                           F.cross_entropy, trainer.comm, device)
            sync(device)
            if val["accuracy"] >= target:
                reached = (time.perf_counter() - start, e + 1)
                break
        found[name] = reached
    print(f"time to {target}: {found}", flush=True)
    return found


def compile_cost(data_path: str, device: str) -> dict:
    found = {}
    for compiled in (False, True):
        start = time.perf_counter()
        trainer, _ = trainer_for(data_path, device, [f"train.compile={str(compiled).lower()}"])
        epochs = []
        for e in range(3):
            t = time.perf_counter()
            trainer.state.epoch, trainer.state.step_in_epoch = e, 0
            trainer.train_epoch()
            sync(device)
            epochs.append(time.perf_counter() - t)
        found["compile" if compiled else "eager"] = {"until_first_epoch_end_s": time.perf_counter() - start - sum(
            epochs[1:]), "steady_epoch_s": statistics.median(epochs[1:])}
    print(f"train.compile: {found}", flush=True)
    return found


PARTS = ("throughput", "time", "compile")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(REPO / "data/prepared/fashion-mnist"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--target", type=float, default=0.89, help="validation accuracy for the time to accuracy")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="which measurements to run")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA GPU here: run this benchmark where one is (or --device cpu to smoke-test it)", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    result = {"device": name, "torch": torch.__version__}
    if "throughput" in args.parts:
        result["throughput"] = throughput(args.data, args.device, args.rounds)
    if "time" in args.parts:
        result[f"time_to_{args.target}"] = time_to_accuracy(args.data, args.device, args.target)
    if "compile" in args.parts:
        result["compile"] = compile_cost(args.data, args.device)
    out = HERE / "results" / f"gpu-{args.device.split(':')[0]}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
