"""Assembly: the parts a training run is made of, built from the config and
handed to the `Trainer`, which only runs the loop. Tests and tools build
their own parts (a dataset of their own, a wrapped loader) instead of
subclassing the trainer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from dist_train.comm import Comm
from dist_train.config import Config, to_dict
from dist_train.data import TrainData, build_data
from dist_train.env import DistEnv
from dist_train.losses import build_loss
from dist_train.models import build_model, check_outputs
from dist_train.optim import build_optimizer
from dist_train.predictor import config_recipe, spec_for
from dist_train.resolve import Resolved
from dist_train.rng import rank_seed, seed_everything
from dist_train.schedules import LRSchedule
from dist_train.strategy import build_strategy
from dist_train.sync_batchnorm import batch_norm_layers, convert_sync_batchnorm
from dist_train.tasks import check_task
from dist_train.trainer import Parts

#: how the Python API hands in a model of its own: (config, data) -> nn.Module
ModelFactory = Callable[[Config, TrainData], nn.Module]


def build_parts(cfg: Config, env: DistEnv, resolved: Resolved, comm: Comm | None = None,
                data: TrainData | None = None, model_factory: ModelFactory | None = None,
                splits: Any = None) -> Parts:
    """Data (unless given; `splits`: a custom source's datasets given in
    Python), model (from the config, or `model_factory(cfg, data)`),
    synchronized batch norm, optimizer, strategy, LR schedule and loss, in
    that order. One forward pass checks the model's outputs against the
    targets first. The ranks agree on the data and the model before the
    strategy's first collective: a mistake in the user's code or data stops
    every rank with that one message (said by one rank), not a lost peer."""
    comm = comm or Comm.of(env)
    given = data is not None or splits is not None
    model, error = None, None
    try:
        data = data if data is not None else build_data(cfg, env, resolved, comm, splits=splits)
        check_task(cfg, data.task)  # a custom source's task is known only now
        # Same seed on every rank for the weights (DDP also broadcasts rank 0's),
        # then a per-rank stream for dropout and anything else random.
        seed_everything(cfg.train.seed)
        model = (model_factory or _config_model)(cfg, data).to(env.device)
        example = data.example_batch()
        check_outputs(model, example.inputs, example.targets, data.task, data.num_outputs,
                      "model.class_path" if cfg.model.class_path else "model")
    except Exception as exc:  # raised together below: no rank goes on to a collective the others never reach
        error = exc
    comm.raise_together(error)
    assert data is not None and model is not None
    synchronized = None
    if cfg.model.sync_batchnorm:
        synchronized = batch_norm_layers(model)  # said once, in the start record
        model = convert_sync_batchnorm(model, env)
    strategy = build_strategy(cfg, env, resolved, model, lambda module: build_optimizer(cfg.optim, module, env.device))
    seed_everything(rank_seed(cfg.train.seed, env.rank))
    total = cfg.train.epochs * data.train.steps_per_epoch
    if cfg.train.max_steps is not None:
        total = min(total, cfg.train.max_steps)
    schedule = LRSchedule(cfg.schedule, cfg.optim.lr, resolved.global_batch_size, total)
    recipe = config_recipe(cfg.model) if model_factory is None else getattr(
        model_factory, "recipe", {"kind": "object", "name": "a model given in Python", "files": {}})
    spec = spec_for(recipe, data, cfg.train.loss, {"source": "python"} if given else data_record(cfg))
    return Parts(data, strategy, schedule, build_loss(cfg.train.loss, data.task), spec, synchronized)


def data_record(cfg: Config) -> dict:
    """The run's data section, its path made absolute: where `dist-train
    evaluate` finds the run's own splits again."""
    record = to_dict(cfg.data)
    if cfg.data.path:
        record["path"] = str(Path(cfg.data.path).resolve())
    return record


def _config_model(cfg: Config, data: TrainData) -> nn.Module:
    return build_model(cfg.model, data.input_shape, data.num_outputs, data.task)
