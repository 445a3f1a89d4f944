"""A minimal torchrun script: the quick start's job by hand, the baseline of
bench_job_overhead.py.

    torchrun --standalone --nproc-per-node 2 tests/benchmarks/minimal_digits.py

The same network (MLP 64-256-10, ReLU, dropout 0.2), optimizer (Adam, LR
0.004 with a cosine decay over the run's steps), data (scikit-learn's digits,
the same seeded 70/15/15 split, standardized with the training split's
mean and std), global batch (64, split over the workers) and 60 epochs as
configs/quickstart.yaml; validation after every epoch and the test split at
the end, reduced over the workers. No checkpoints, no logs but a line per
epoch."""

import math
import os

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.nn.parallel import DistributedDataParallel

EPOCHS, BATCH, LR = 60, 64, 0.004


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    digits = load_digits()
    x, y = digits.images.astype(np.float32).reshape(-1, 64), digits.target
    order = np.random.default_rng(0).permutation(len(y))
    n_val = n_test = int(round(len(y) * 0.15))
    val, test, train = order[:n_val], order[n_val:n_val + n_test], order[n_val + n_test:]
    mean, std = x[train].mean(), x[train].std()
    x = torch.from_numpy((x - mean) / std)
    y = torch.from_numpy(y)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Dropout(0.2), nn.Linear(256, 10))
    ddp = DistributedDataParallel(model)
    opt = torch.optim.Adam(ddp.parameters(), lr=LR)
    steps_per_epoch = math.ceil(len(train) / BATCH)
    total = EPOCHS * steps_per_epoch
    step = 0

    def evaluate(idx: np.ndarray) -> tuple[float, float]:
        part = np.array_split(idx, world)[rank]
        model.eval()
        with torch.no_grad():
            out = model(x[part])
            sums = torch.tensor([F.cross_entropy(out, y[part], reduction="sum").item(),
                                 (out.argmax(1) == y[part]).sum().item(), len(part)], dtype=torch.float64)
        model.train()
        dist.all_reduce(sums)
        return sums[0].item() / sums[2].item(), sums[1].item() / sums[2].item()

    for epoch in range(EPOCHS):
        perm = torch.from_numpy(train)[torch.randperm(len(train), generator=torch.Generator().manual_seed(epoch))]
        for s in range(steps_per_epoch):
            chunk = perm[s * BATCH:(s + 1) * BATCH]
            mine = np.array_split(chunk.numpy(), world)[rank]
            for group in opt.param_groups:
                group["lr"] = LR * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(ddp(x[mine]), y[mine], reduction="sum") * (world / len(chunk))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        val_loss, val_acc = evaluate(val)
        if rank == 0:
            print(f"epoch {epoch} val_loss {val_loss:.4f} val_accuracy {val_acc:.4f}", flush=True)
    test_loss, test_acc = evaluate(test)
    if rank == 0:
        print(f"test_loss {test_loss:.4f} test_accuracy {test_acc:.4f}", flush=True)
    dist.barrier()  # nobody leaves while a peer still talks to it
    dist.destroy_process_group()


if __name__ == "__main__":
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    main()
