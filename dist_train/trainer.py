"""The training loop, readable top to bottom: build, then epochs of steps,
evaluation after each epoch, the test split at the end."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from dist_train.config import Config
from dist_train.data import build_data
from dist_train.data.loader import TrainStep
from dist_train.env import DistEnv
from dist_train.losses import build_loss
from dist_train.metrics import RunningMean, evaluate
from dist_train.models import build_model
from dist_train.optim import build_optimizer
from dist_train.resolve import Resolved
from dist_train.strategy import Strategy, build_strategy
from dist_train.sync_batchnorm import convert_sync_batchnorm
from dist_train.tracking import NullTracker, Tracker

EVAL_BATCH_SIZE = 1024


@dataclass
class FitResult:
    model: nn.Module
    steps: int
    val: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def rank_seed(seed: int, rank: int) -> int:
    """A distinct, reproducible seed per rank (dropout masks must differ across ranks)."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


class Trainer:
    def __init__(self, cfg: Config, env: DistEnv, resolved: Resolved, tracker: Tracker | None = None,
                 data: Any = None) -> None:
        self.cfg, self.env, self.resolved = cfg, env, resolved
        self.tracker = tracker or NullTracker()
        self.data = data if data is not None else build_data(cfg, env, resolved)
        # Same seed on every rank for the weights (DDP also broadcasts rank 0's),
        # then a per-rank stream for dropout and anything else random.
        seed_everything(cfg.train.seed)
        model = build_model(cfg.model, self.data.input_shape, self.data.num_classes).to(env.device)
        if cfg.model.sync_batchnorm:
            model = convert_sync_batchnorm(model, env)
        self.strategy: Strategy = build_strategy(cfg, env, resolved, model, build_optimizer(cfg.optim, model))
        seed_everything(rank_seed(cfg.train.seed, env.rank))
        self.loss_fn = build_loss(cfg.train.loss)
        self.train_loader = self.data.train
        self.global_step = 0
        self.running_loss = RunningMean(env.device)

    # ------------------------------------------------------------ the loop

    def fit(self) -> FitResult:
        t, tracker = self.cfg.train, self.tracker
        tracker.log("start", world_size=self.env.world_size, global_batch_size=self.resolved.global_batch_size,
                    per_rank_batch_size=self.resolved.per_rank_batch_size, strategy=self.resolved.strategy,
                    train_samples=self.data.train_size, steps_per_epoch=self.train_loader.steps_per_epoch)
        val: dict[str, float] = {}
        for epoch in range(t.epochs):
            start = time.perf_counter()
            samples = self.train_epoch(epoch)
            seconds = time.perf_counter() - start
            val = self.evaluate("val")
            tracker.log("epoch", epoch=epoch, step=self.global_step, train_loss=self.running_loss.mean("epoch", self.env),
                        val_loss=val["loss"], val_accuracy=val["accuracy"], epoch_seconds=round(seconds, 4),
                        samples_per_s=samples / seconds if seconds > 0 else float("nan"))
            if self._reached_max_steps():
                break
        test = self.evaluate("test")
        tracker.log("test", step=self.global_step, test_loss=test["loss"], test_accuracy=test["accuracy"])
        return FitResult(self.strategy.model, self.global_step, val, test)

    def train_epoch(self, epoch: int) -> int:
        """One pass over this rank's share of the epoch; returns the number of
        samples processed across all ranks."""
        self.strategy.train_model.train()
        samples = 0
        for step in self.train_loader.epoch(epoch):
            self.train_step(step)
            samples += step.global_count
            self.global_step += 1
            if self.global_step % self.cfg.train.log_every_steps == 0:
                self.tracker.log("train", epoch=epoch, step=self.global_step,
                                 loss=self.running_loss.mean("interval", self.env), lr=self.lr)
            if self._reached_max_steps():
                break
        return samples

    def train_step(self, step: TrainStep) -> None:
        """One optimizer step over this rank's micro-batches. Each sample's loss
        is weighted by 1/(samples in the whole step), so ranks and micro-batches
        of different sizes still add up to the exact global mean."""
        strategy = self.strategy
        last = len(step.micro_batches) - 1
        for i, batch in enumerate(step.micro_batches):
            with strategy.micro_step(sync=i == last):
                loss_sum = self.loss_fn(strategy.train_model(batch.inputs), batch.targets)
                strategy.backward(loss_sum, step.global_count)
            self.running_loss.add(loss_sum, batch.targets.shape[0])
        strategy.step(self.cfg.train.grad_clip_norm)

    def evaluate(self, split_name: str) -> dict[str, float]:
        batches = self.data.eval_batches(split_name, EVAL_BATCH_SIZE)
        return evaluate(self.strategy.model, batches, self.loss_fn, self.env)

    # ------------------------------------------------------------ helpers

    @property
    def lr(self) -> float:
        return float(self.strategy.optimizer.param_groups[0]["lr"])

    def _reached_max_steps(self) -> bool:
        return self.cfg.train.max_steps is not None and self.global_step >= self.cfg.train.max_steps

    def state(self) -> dict[str, Any]:
        return {"global_step": self.global_step, **self.strategy.state_dict()}
