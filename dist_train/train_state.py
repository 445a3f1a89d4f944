"""`TrainState`: where the loop is and what it remembers between steps.

Everything here is saved in every checkpoint and put back on resume, through
the dataclass's own fields: a resumable value is one line below."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainState:
    epoch: int = 0
    step_in_epoch: int = 0  # optimizer steps done in `epoch`: where the data loader resumes
    global_step: int = 0
    # the epoch's training so far, over every start of the job: a resumed epoch
    # reports the throughput of all its steps, not the few (or none) run since
    epoch_samples: int = 0
    epoch_seconds: float = 0.0  # time spent training it (not the time the job was down)
    last_val: dict[str, float] = field(default_factory=dict)  # the last validation metrics
    last_test: dict[str, float] = field(default_factory=dict)  # the test split's metrics, once the run finished
    best_checkpoint: list = field(default_factory=list)  # [monitored value, global step] of the best kept checkpoint
    best_monitored: float | None = None  # best value so far of the metric the logs carry
    # the first step the next `train` record's loss covers (set at each record and
    # epoch end; None: the epoch's first, as for checkpoints older than it)
    loss_from_step: int | None = None
    last_logged_lr: float | None = None  # a resumed run records the LR exactly as the whole run would
    world_size: int = 1  # of the run that saved it
    finished: bool = False
    early_stopped: bool = False

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for f in dataclasses.fields(self):
            if f.name in state:
                setattr(self, f.name, state[f.name])
