"""A hand-written torch DDP loop over Fashion-MNIST held in memory, the
baseline of bench_data_cache.py and bench_time_to_accuracy.py.

    torchrun --standalone --nproc-per-node 2 tests/benchmarks/handwritten_fashion.py SHARDS --hidden 64 --epochs 5

The training split is read from prepared shards into one tensor and
standardized with the manifest's per-channel statistics (not timed), then
each epoch: a seeded permutation, per step this rank's part of a global batch,
cross_entropy, zero_grad, backward, optimizer step. After each epoch the
validation split is evaluated (reduced over ranks); rank 0 prints one JSON
line per epoch: samples/s of the epoch's training (between two barriers),
validation accuracy, and seconds since the script started."""

import argparse
import json
import math
import time

START = time.time()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

from dist_train.data.shards import iter_blocks, load_manifest  # noqa: E402  (reading only)


def split(manifest, name):
    blocks = [b for info in manifest.splits[name] for b in iter_blocks(manifest.root / info.file)]
    x = torch.from_numpy(np.concatenate([x for x, _ in blocks])).float()
    stats = manifest.normalization["per_channel"]
    x = (x - stats["mean"][0]) / stats["std"][0]
    return x.reshape(len(x), -1), torch.from_numpy(np.concatenate([y for _, y in blocks]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("shards")
    parser.add_argument("--hidden", type=int, nargs="+", default=[64])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--cosine", action="store_true")
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    manifest = load_manifest(args.shards)
    x, y = split(manifest, "train")
    vx, vy = split(manifest, "val")
    torch.manual_seed(0)
    layers, width = [], x.shape[1]
    for h in args.hidden:
        layers += [nn.Linear(width, h), nn.ReLU()] + ([nn.Dropout(args.dropout)] if args.dropout else [])
        width = h
    model = nn.Sequential(*layers, nn.Linear(width, 10))
    ddp = DistributedDataParallel(model)
    opt = (torch.optim.AdamW(ddp.parameters(), lr=args.lr, weight_decay=args.weight_decay) if args.weight_decay
           else torch.optim.Adam(ddp.parameters(), lr=args.lr))
    n, b = len(y), args.batch // world
    steps = math.ceil(n / args.batch)
    step = 0
    for epoch in range(args.epochs):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))
        dist.barrier()
        begin = time.perf_counter()
        model.train()
        for s in range(steps):
            chunk = perm[s * args.batch:(s + 1) * args.batch]
            idx = chunk[rank * len(chunk) // world:(rank + 1) * len(chunk) // world]
            if args.cosine:
                for g in opt.param_groups:
                    g["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * step / (steps * args.epochs)))
            loss = F.cross_entropy(ddp(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        dist.barrier()
        seconds = time.perf_counter() - begin
        model.eval()
        lo, hi = rank * len(vy) // world, (rank + 1) * len(vy) // world
        with torch.no_grad():
            correct = torch.tensor([(model(vx[lo:hi]).argmax(1) == vy[lo:hi]).sum().item(), hi - lo],
                                   dtype=torch.float64)
        dist.all_reduce(correct)
        if rank == 0:
            print(json.dumps({"epoch": epoch, "samples_per_s": n / seconds, "val_accuracy": (correct[0] / correct[1]).item(),
                              "since_start_s": time.time() - START}), flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
