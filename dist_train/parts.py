"""Assembly: the parts a training run is made of, built from the config and
handed to the `Trainer`, which only runs the loop. Tests and tools build
their own parts (a dataset of their own, a wrapped loader) instead of
subclassing the trainer."""

from __future__ import annotations

from dataclasses import dataclass

from dist_train.comm import Comm
from dist_train.config import Config
from dist_train.data import TrainData, build_data
from dist_train.env import DistEnv
from dist_train.losses import LossFn, build_loss
from dist_train.models import build_model
from dist_train.optim import build_optimizer
from dist_train.resolve import Resolved
from dist_train.rng import rank_seed, seed_everything
from dist_train.schedules import LRSchedule
from dist_train.strategy import Strategy, build_strategy
from dist_train.sync_batchnorm import convert_sync_batchnorm


@dataclass
class Parts:
    data: TrainData
    strategy: Strategy  # the model, wrapped for training, its optimizer and precision
    schedule: LRSchedule
    loss_fn: LossFn


def build_parts(cfg: Config, env: DistEnv, resolved: Resolved, comm: Comm | None = None,
                data: TrainData | None = None) -> Parts:
    """Data (unless given), model, synchronized batch norm, optimizer, strategy,
    LR schedule and loss, in that order."""
    data = data if data is not None else build_data(cfg, env, resolved, comm)
    # Same seed on every rank for the weights (DDP also broadcasts rank 0's),
    # then a per-rank stream for dropout and anything else random.
    seed_everything(cfg.train.seed)
    model = build_model(cfg.model, data.input_shape, data.num_classes).to(env.device)
    if cfg.model.sync_batchnorm:
        model = convert_sync_batchnorm(model, env)
    strategy = build_strategy(cfg, env, resolved, model, build_optimizer(cfg.optim, model))
    seed_everything(rank_seed(cfg.train.seed, env.rank))
    total = cfg.train.epochs * data.train.steps_per_epoch
    if cfg.train.max_steps is not None:
        total = min(total, cfg.train.max_steps)
    schedule = LRSchedule(cfg.schedule, cfg.optim.lr, resolved.global_batch_size, total)
    return Parts(data, strategy, schedule, build_loss(cfg.train.loss))
