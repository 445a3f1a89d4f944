"""`data.cache: host | device`: every split read once, normalized, and kept in
memory, so later epochs only cut batches.

Prepared shards and custom datasets are read whole on every rank (shards are
verified first, as always) and then walked exactly like in-memory data: one
seeded permutation of the training set per epoch, each rank its contiguous
part of every global batch. So every sample is used once per epoch across
ranks, N workers compute what one process computes, metrics are exact, and a
checkpoint resumes mid-epoch exactly (also with another number of workers).
A cached shard run visits samples in another order than a streamed one; a
resume that switches between them restarts the interrupted epoch.

`host` keeps the splits in host memory (pinned when training on a GPU;
batches are cut there and copied ahead of their step), `device` on the
training device. When they do not fit, the run stops before the first step
saying how much they need."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable

import numpy as np
import torch

from dist_train.data.normalization import Normalizer
from dist_train.data.shards import Manifest, iter_blocks
from dist_train.data.sources import InputSpec, Split, Splits
from dist_train.env import DistEnv
from dist_train.errors import DistTrainError

#: what a split may use of the memory it goes to: the rest is the run's own
FREE_SHARE = 0.8


def shard_splits(manifest: Manifest, normalize: Normalizer) -> Splits:
    """Every split of a prepared data set, read whole and normalized (on the CPU)."""
    def read(split: str) -> Split:
        blocks = [b for info in manifest.splits[split] for b in iter_blocks(manifest.root / info.file)]
        x = normalize(torch.from_numpy(np.concatenate([x for x, _ in blocks])))
        return Split(x.cpu(), torch.from_numpy(np.concatenate([y for _, y in blocks])))

    return Splits(read("train"), read("val"), read("test"), manifest.input_shape, manifest.num_classes, manifest.task,
                  manifest.input_spec(normalize))


def dataset_splits(batches_of: Iterable, input_shape: tuple[int, ...], num_classes: int, task: str,
                   input_spec: InputSpec) -> Splits:
    """Splits from (inputs, targets) batches already normalized, one iterable per split."""
    def read(batches: Iterable) -> Split:
        xs, ys = zip(*((x.cpu(), y.cpu()) for x, y in batches))
        return Split(torch.cat(xs), torch.cat(ys))

    train, val, test = (read(b) for b in batches_of)
    return Splits(train, val, test, input_shape, num_classes, task, input_spec)


def place(splits: Splits, where: str, env: DistEnv) -> Splits:
    """The splits on the device (`where` = device) or left in host memory
    (pinned for a GPU), after checking that they fit."""
    need = sum(t.numel() * t.element_size() for s in (splits.train, splits.val, splits.test)
               for t in (s.inputs, s.targets))
    check_fits(need, where, env)
    if where == "device":
        move = lambda s: Split(s.inputs.to(env.device), s.targets.to(env.device))  # noqa: E731
    elif env.device.startswith("cuda"):
        move = lambda s: Split(s.inputs.pin_memory(), s.targets.pin_memory())  # noqa: E731
    else:
        return splits
    return dataclasses.replace(splits, train=move(splits.train), val=move(splits.val), test=move(splits.test))


def check_fits(need: int, where: str, env: DistEnv) -> None:
    if where == "device" and env.device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(env.device))
        what, have = f"{env.device}, which has", free
    else:
        # every worker on this node holds its own copy
        need *= max(env.local_world_size, 1)
        what, have = "this node's host memory, which has", _available_host_bytes()
    if have is not None and need > FREE_SHARE * have:
        raise DistTrainError(
            f"data.cache={where} needs {_gib(need)} for the training, validation and test splits as float32 "
            f"({'per worker' if where == 'device' else 'for all workers on this node'}) in {what} {_gib(have)} "
            f"available; use {'data.cache=host (host memory) or ' if where == 'device' else ''}data.cache=none "
            f"(read the data every epoch){'' if where == 'device' else ', or fewer workers on this node'}")


def _available_host_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**27 else f"{math.ceil(n / 2**20)} MiB"
