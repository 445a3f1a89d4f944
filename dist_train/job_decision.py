"""What `dist-train launch` decided before it started its workers, handed to
each of them: the config as the launcher loaded it, the number of workers it
checked the job for, the run directory's lock it holds for the job, and where
the run starts. A worker then reads no config file, checks nothing and plans
nothing a second time (the plan verifies a checkpoint's every file: done once
per job). A worker that `--max-restarts` started again plans afresh, since
checkpoints were written since; so do the workers of a job whose size the
launcher could not know, or of several nodes (where rank 0 takes the lock)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dist_train.atomic import write_atomic
from dist_train.config import Config, config_from_dict, to_dict
from dist_train.start import StartPlan


@dataclass(frozen=True)
class JobDecision:
    config: Config
    checked_world_size: int | None = None  # the job was checked (preflight) for this many workers
    lock: str | None = None  # the run directory's lock (a path) the launcher holds for the whole job
    plan: StartPlan | None = None  # where the run starts; None: rank 0 plans it

    def write(self, path: Path) -> None:
        record = {"config": to_dict(self.config), "checked_world_size": self.checked_world_size, "lock": self.lock,
                  "plan": self.plan.record() if self.plan is not None else None}
        write_atomic(Path(path), json.dumps(record))

    @classmethod
    def read(cls, path: Path, restarted: bool = False) -> "JobDecision":
        """`restarted`: the worker of a restart, for which the plan is stale."""
        record = json.loads(Path(path).read_text())
        plan = record["plan"]
        return cls(config_from_dict(record["config"]), record["checked_world_size"], record["lock"],
                   None if plan is None or restarted else StartPlan.from_record(plan))
