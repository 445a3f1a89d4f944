"""Every check that needs no process group and no worker: the config against
the job's shape, the data, and the model against the data. `dist-train run`
runs it before it starts the process group; `launch`, `slurm submit` and
`sweep` before they start anything, so a mistake is one line and exit
status 2 instead of a traceback per worker."""

from __future__ import annotations

from dist_train.config import Config
from dist_train.data import check_data
from dist_train.models import check_model
from dist_train.resolve import Resolved, resolve
from dist_train.tasks import CLASSIFICATION, Task, check_task


def check_job(cfg: Config, world_size: int) -> Resolved:
    resolved = resolve(cfg, world_size)
    facts = check_data(cfg, world_size)
    check_model(cfg.model, facts.input_shape)
    if facts.task is not None:  # a custom source tells only when built (dist_train.parts checks it then)
        check_task(cfg, facts.task)
    if resolved.strategy == "fsdp" and cfg.strategy.fsdp_modules and facts.input_shape is not None:
        check_fsdp_units(cfg, facts.input_shape, facts.task or CLASSIFICATION)
    return resolved


def check_fsdp_units(cfg: Config, input_shape: tuple[int, ...], task: Task) -> None:
    """strategy.fsdp_modules must name module classes of the network: built on
    the meta device (no memory) and looked at. A network that cannot be built
    there is checked when the workers build it."""
    import torch

    from dist_train.errors import ConfigError
    from dist_train.models import build_model
    from dist_train.strategy.fsdp import units

    try:
        with torch.device("meta"):
            model = build_model(cfg.model, input_shape, 2, task)
    except ConfigError:
        raise
    except Exception:  # noqa: BLE001 - a user's network that needs real tensors to be built: the workers check
        return
    units(model, tuple(cfg.strategy.fsdp_modules), built_in=not cfg.model.class_path)
