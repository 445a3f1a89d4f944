"""Faults a user's model or script can bring, for the stall tests: a rank that
sleeps inside a step, a collective only one rank calls. Each fires once per
`once` file (created when it fires), so the run after a restart trains as an
uninterrupted one does, and the final weights can be compared exactly."""

import math
import os
import time
from pathlib import Path

import torch
from torch import nn


def fires(once: str) -> bool:
    """True the first time only (per `once` file)."""
    if not once or Path(once).exists():
        return False
    Path(once).write_text(f"{time.monotonic():.3f} rank {os.environ.get('RANK', '0')} pid {os.getpid()}\n")
    return True


class Faulty(nn.Module):
    """An MLP whose forward, on rank `rank` at its `step`-th training forward
    of this process, sleeps (`fault="sleep"`) or calls an all-reduce the other
    ranks never call (`fault="all_reduce"`); with `init_sleep`, that rank is
    that many seconds late to start."""

    def __init__(self, input_shape, num_classes, fault="sleep", step=30, rank=1, once="", width=32, init_sleep=0.0):
        super().__init__()
        if init_sleep and int(os.environ.get("RANK", "0")) == rank:
            time.sleep(init_sleep)  # a slow start on one rank (a slow file system, a compile)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.ReLU(),
                                 nn.Linear(width, num_classes))
        self.fault, self.at, self.rank, self.once, self.steps = fault, step, rank, once, 0

    def forward(self, x):
        if self.training:
            self.steps += 1
            if self.steps == self.at and int(os.environ.get("RANK", "0")) == self.rank and fires(self.once):
                if self.fault == "sleep":
                    time.sleep(600)  # the stall
                else:
                    torch.distributed.all_reduce(torch.ones(7))  # only this rank calls it
        return self.net(x)
