"""Which samples each rank uses at each step: one plan, computed identically on
every rank from (seed, epoch), without communication.

Every epoch has a seeded permutation of the training set. Step s takes the
global batch perm[s*B:(s+1)*B], cuts it into `grad_accum_steps` global
micro-batches, and rank r takes the r-th contiguous 1/N of each. So the N
ranks together see exactly the global batch one process would see, micro-batch
by micro-batch (what batch norm's statistics are taken over, with
`model.sync_batchnorm`), and across an epoch every index exactly once.

When the set does not divide by B, the last global batch is smaller (n mod B
samples), split as evenly as possible over ranks and micro-batches; a rank may
get fewer samples than another, or none. The trainer weights every sample by
1/(global samples in the step), so that step is still exactly the mean over its
samples. With `drop_last` the remainder is dropped instead (a different
remainder each epoch, since the permutation changes).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class StepPlan:
    step: int  # index of this step within its epoch
    micro_indices: tuple[torch.Tensor, ...]  # this rank's sample indices per micro-batch
    global_count: int  # samples in this step across all ranks


def even_slices(total: int, parts: int) -> list[tuple[int, int]]:
    """Split range(total) into `parts` contiguous slices whose sizes differ by at most one."""
    base, extra = divmod(total, parts)
    bounds, start = [], 0
    for i in range(parts):
        end = start + base + (1 if i < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


@dataclass(frozen=True)
class ShardedBatchPlan:
    num_samples: int
    global_batch_size: int
    world_size: int
    rank: int
    seed: int
    grad_accum_steps: int = 1
    drop_last: bool = False

    @property
    def steps_per_epoch(self) -> int:
        full, rest = divmod(self.num_samples, self.global_batch_size)
        return full if (self.drop_last or rest == 0) else full + 1

    def permutation(self, epoch: int) -> torch.Tensor:
        """The epoch's order of the whole training set; the same on every rank."""
        rng = np.random.default_rng([self.seed, epoch])
        return torch.from_numpy(rng.permutation(self.num_samples))

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[StepPlan]:
        perm = self.permutation(epoch)
        B = self.global_batch_size
        for step in range(start_step, self.steps_per_epoch):
            chunk = perm[step * B:(step + 1) * B]
            micro = []
            for a, b in even_slices(len(chunk), self.grad_accum_steps):
                lo, hi = even_slices(b - a, self.world_size)[self.rank]
                micro.append(chunk[a + lo:a + hi])
            yield StepPlan(step, tuple(micro), len(chunk))
