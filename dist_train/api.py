"""`dist_train.fit`: the same trainer from a script instead of a config file.

    import dist_train
    result = dist_train.fit("configs/quickstart.yaml", "optim.lr=0.01", model=MyNet(), data=(train, val, test))

The script runs as one process (`python train.py`), under torchrun, or under
`dist-train launch --nproc-per-node N train.py` (with everything launch adds:
restarts, lost peers named, stop signals). Every guarantee of a config run
holds: N workers compute what one process computes, a resume is exact, a
stop saves a checkpoint, mistakes are found before the first step."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from dist_train.config import Config, config_from_dict, load_config, replace, to_dict
from dist_train.env import DistEnv
from dist_train.errors import EXIT_RESUME, DistTrainError
from dist_train.parts import build_parts
from dist_train.trainer import FitResult


def fit(config: str | Path | Mapping[str, Any] | Config | None = None, *overrides: str,
        model: nn.Module | Callable[..., nn.Module] | None = None, data: Any = None,
        exit_on_stop: bool = True) -> FitResult | None:
    """Train as `dist-train run` would, in this process (one worker of a job
    when a launcher started it).

    config: a YAML file, a mapping of sections, or a Config; `overrides`:
    dotted key=value strings (`"optim.lr=0.01"`). model: an nn.Module, or a
    function building one (called with input_shape and num_classes or
    num_outputs when it asks for them); default: the config's model. Build it
    after seeding, or pass the function: every worker must start from the same
    weights (DDP broadcasts rank 0's). data: the train, validation and test
    map-style datasets (a tuple, or a dict with those keys) whose items are
    (input tensor, target); default: the config's data.

    Returns the result (the trained model, its validation and test metrics),
    or None when run.dir holds a run that already finished. A stop request
    (SIGTERM, SIGUSR1, Ctrl-C) saves a checkpoint and ends the process with
    exit status 75 (run the script again to resume), unless exit_on_stop is
    False. A mistake raises DistTrainError with a message naming it."""
    from dist_train.run import run_job

    from dist_train.worker_env import worker_env

    cfg = _as_config(config, overrides)
    env = worker_env(cfg)  # as `dist-train run` sets itself up: under srun, torchrun or alone

    def build(cfg: Config, env: DistEnv, resolved: Any, comm: Any) -> Any:
        return build_parts(cfg, env, resolved, comm, None, _model_factory(model) if model is not None else None,
                           splits=data)

    outcome = run_job(cfg, env, build, script=True)
    if outcome.exit_code == EXIT_RESUME and exit_on_stop:
        sys.exit(EXIT_RESUME)
    if outcome.stop is not None:  # the script goes on: signals act as usual again
        outcome.stop.uninstall()
    return outcome.result


def _as_config(config: Any, overrides: Sequence[str]) -> Config:
    if isinstance(config, Config):
        return replace(config) if not overrides else config_from_dict(to_dict(config), list(overrides))
    if config is None or isinstance(config, Mapping):
        return config_from_dict(dict(config or {}), list(overrides))
    if isinstance(config, (str, Path)):
        return load_config(config, list(overrides))
    raise DistTrainError(f"dist_train.fit's config must be a YAML path, a mapping or a Config, not a "
                         f"{type(config).__name__}")


def _model_factory(model: Any) -> Callable[[Config, Any], nn.Module]:
    from dist_train.predictor import object_recipe

    def make(cfg: Config, data: Any) -> nn.Module:
        from dist_train.models import user_model

        if isinstance(model, nn.Module):
            return model
        return user_model("model", model, {}, data.task.offered(data.input_shape, data.num_outputs),
                          "the model function")
    make.recipe = object_recipe(model)  # type: ignore[attr-defined]  # how a model bundle builds it again
    return make
