"""The training loop, readable top to bottom: build; then epochs of steps with
checkpoints, stop requests and non-finite guards; evaluation, LR plateau and
early stopping after each epoch; the test split at the end.

Progress is (epoch, step_in_epoch, global_step). A checkpoint taken at a step
boundary holds everything the next step depends on, so a resumed run repeats
the uninterrupted one bit for bit (same world size)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dist_train import checkpoint as ckpt
from dist_train.callbacks import EarlyStopping, StopRequest, better, metric_mode
from dist_train.config import Config, dump_yaml, to_dict
from dist_train.data import build_data
from dist_train.data.loader import TrainStep
from dist_train.distributed import agree_any
from dist_train.env import DistEnv
from dist_train.errors import DistTrainError, TrainingFailed
from dist_train.losses import build_loss
from dist_train.metrics import RunningMean, evaluate
from dist_train.models import build_model
from dist_train.optim import apply_hyperparameters, build_optimizer
from dist_train.resolve import Resolved
from dist_train.schedules import LRSchedule
from dist_train.strategy import Strategy, build_strategy
from dist_train.sync_batchnorm import convert_sync_batchnorm
from dist_train.tracking import NullTracker, Tracker

EVAL_BATCH_SIZE = 1024
# fp16 overflow skips in a row before the job stops as diverged (the scale would underflow)
MAX_OVERFLOW_SKIPS = 50


@dataclass
class FitResult:
    model: nn.Module
    steps: int
    val: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    stopped: bool = False  # a stop request was honoured: checkpoint saved, resume later
    stopped_by: str = ""  # the signal that asked (or "another rank")
    early_stopped: bool = False


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def rank_seed(seed: int, rank: int) -> int:
    """A distinct, reproducible seed per rank (dropout masks must differ across ranks)."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


class Trainer:
    def __init__(self, cfg: Config, env: DistEnv, resolved: Resolved, tracker: Tracker | None = None,
                 data: Any = None, run_dir: Path | None = None, stop: StopRequest | None = None) -> None:
        self.cfg, self.env, self.resolved = cfg, env, resolved
        self.tracker = tracker or NullTracker()
        self.run_dir = run_dir  # None: no checkpoints
        self.stop = stop or StopRequest()
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
        total = cfg.train.epochs * self.train_loader.steps_per_epoch
        if cfg.train.max_steps is not None:
            total = min(total, cfg.train.max_steps)
        self.schedule = LRSchedule(cfg.schedule, cfg.optim.lr, resolved.global_batch_size, total)
        self.early_stopping = EarlyStopping(cfg.early_stopping)
        self.running_loss = RunningMean(env.device)
        self.epoch = self.step_in_epoch = self.global_step = 0
        self.last_val: dict[str, float] = {}
        self.best_checkpoint: tuple[float, int] | None = None  # (monitored value, global step)
        self.last_saved_step = -1
        self._rng_to_restore: dict[str, Any] | None = None
        self.wandb_run_id: str | None = None
        self.finished = self.early_stopped = False
        self.checkpointer: ckpt.AsyncCheckpointer | None = None  # made at the first save
        self.last_grad_norm = torch.zeros(())
        # the metric whose best value the logs carry: early stopping's, else the checkpoints'
        self.monitor = cfg.early_stopping.monitor if cfg.early_stopping.enabled else cfg.checkpoint.monitor
        self.best_monitored: float | None = None
        self.overflow_skips = 0  # consecutive fp16 overflow skips
        self._last_logged_lr: float | None = None  # checkpointed: a resumed run logs what the whole run would
        self._previous_world_size: int | None = None  # of the checkpoint restored

    def attach_tracker(self, tracker: Tracker, wandb_run_id: str | None) -> None:
        """Where records go from now on (made after the parts were built and the
        checkpoint loaded, so that a rejected start leaves no trace)."""
        self.tracker = tracker
        self.wandb_run_id = wandb_run_id or self.wandb_run_id

    # ------------------------------------------------------------ the loop

    def fit(self) -> FitResult:
        try:
            return self._fit()
        except BaseException:
            # let a save in flight finish (or fail) before the error leaves: its
            # thread must not outlive the process group it coordinates on
            try:
                self.wait_for_checkpoint()
            except (DistTrainError, RuntimeError):
                pass  # the error already on its way out says more
            raise

    def _fit(self) -> FitResult:
        t, tracker = self.cfg.train, self.tracker
        if self.global_step == 0:
            tracker.log("start", world_size=self.env.world_size, global_batch_size=self.resolved.global_batch_size,
                        per_rank_batch_size=self.resolved.per_rank_batch_size, strategy=self.resolved.strategy,
                        precision=t.precision,
                        train_samples=self.data.train_size, steps_per_epoch=self.train_loader.steps_per_epoch)
        early_stopped = False
        while self.epoch < t.epochs:
            start = time.perf_counter()
            samples = self.train_epoch()
            seconds = time.perf_counter() - start
            if self._stop_agreed():
                return self._stop_for_resume()
            early_stopped = self.end_of_epoch(samples, seconds)
            if early_stopped:
                tracker.log("early_stop", epoch=self.epoch - 1, step=self.global_step, monitor=self.cfg.early_stopping.monitor,
                            best=self.early_stopping.best, best_epoch=self.early_stopping.best_epoch)
            last_epoch = early_stopped or self._reached_max_steps() or self.epoch >= t.epochs
            if last_epoch:
                break  # the final checkpoint, after the test split, follows
            if self._checkpoint_due_at_epoch_end():
                self.save_checkpoint()
        if self.early_stopping.restore(self.strategy.model):
            tracker.log("restore_best", epoch=self.early_stopping.best_epoch, best=self.early_stopping.best)
        test = self.evaluate("test")
        tracker.log("test", step=self.global_step, test_loss=test["loss"], test_accuracy=test["accuracy"])
        self.finished, self.early_stopped = True, early_stopped
        self.save_checkpoint()  # the end of the run (marked finished)
        self.wait_for_checkpoint()
        return FitResult(self.strategy.model, self.global_step, self.last_val, test, early_stopped=early_stopped)

    def train_epoch(self) -> int:
        """The rest of the current epoch, from `step_in_epoch`; returns the number
        of samples processed across all ranks."""
        self.strategy.train_model.train()
        samples = 0
        cfg = self.cfg
        self.tracker.start_epoch(self.epoch, self.train_loader.steps_per_epoch, self.step_in_epoch)
        for step in self.train_loader.epoch(self.epoch, self.step_in_epoch):
            if self._rng_to_restore is not None:  # resumed: the RNG as it was before this very step
                ckpt.set_rng_state(self._rng_to_restore)
                self._rng_to_restore = None
            lr = self.schedule.apply(self.strategy.optimizer, self.global_step, self.epoch)
            self.train_step(step)
            samples += step.global_count
            self.global_step += 1
            self.step_in_epoch = step.step + 1
            self.tracker.step()
            if cfg.train.lr_every_step and lr != self._last_logged_lr:
                # the LR of every step, recorded where it changes (a W&B row costs
                # ~0.2-0.35 ms, too much to repeat an unchanged value each step)
                self.tracker.log("lr", step=self.global_step, lr=lr)
                self._last_logged_lr = lr
            if self.global_step % cfg.train.log_every_steps == 0:
                self.tracker.log("train", epoch=self.epoch, step=self.global_step,
                                 loss=self.running_loss.mean("interval", self.env), lr=lr,
                                 grad_norm=float(self.last_grad_norm))
            # a stop first: its own checkpoint then carries the stop record too
            if self.global_step % cfg.train.stop_check_every_steps == 0 and self._stop_agreed():
                return samples
            if cfg.checkpoint.every_steps and self.global_step % cfg.checkpoint.every_steps == 0:
                self.save_checkpoint()
            if self._reached_max_steps():
                break
        return samples

    def train_step(self, step: TrainStep) -> None:
        """One optimizer step over this rank's micro-batches. Each sample's loss
        is weighted by 1/(samples in the whole step), so ranks and micro-batches
        of different sizes still add up to the exact global mean. A non-finite
        loss on any rank makes non-finite gradients, which the all-reduce carries
        to every rank: all ranks see the same norm and take the same decision."""
        strategy = self.strategy
        last = len(step.micro_batches) - 1
        losses = []
        for i, batch in enumerate(step.micro_batches):
            with strategy.micro_step(sync=i == last):
                loss_sum = self.loss_fn(strategy.forward(batch.inputs), batch.targets)
                strategy.backward(loss_sum, step.global_count)
            losses.append((loss_sum, batch.targets.shape[0]))
        result = strategy.apply_step(self.cfg.train.grad_clip_norm)
        norm = self.last_grad_norm = result.norm
        if result.applied:
            self.overflow_skips = 0
            for loss_sum, count in losses:  # only kept steps count towards the logged loss
                self.running_loss.add(loss_sum, count)
            return
        # the weights stay as they were: no checkpoint ever holds NaN weights
        if strategy.dynamic_loss_scaling and self.overflow_skips < MAX_OVERFLOW_SKIPS:
            # fp16: the loss scaler skips the step and lowers the scale (normal, now and then)
            self.overflow_skips += 1
            self.tracker.log("skipped_step", epoch=self.epoch, step=self.global_step + 1, grad_norm=norm.item(),
                             reason="fp16 overflow", loss_scale=strategy.loss_scale)
            return
        if self.cfg.train.nonfinite == "skip":
            self.tracker.log("skipped_step", epoch=self.epoch, step=self.global_step + 1, grad_norm=norm.item())
            return
        raise TrainingFailed(
            f"non-finite loss or gradient (gradient norm {norm.item()}) at epoch {self.epoch}, global step "
            f"{self.global_step + 1}; the weights were not updated. Lower optim.lr, set train.grad_clip_norm, "
            f"check the inputs for NaN, or set train.nonfinite=skip to skip such steps")

    def end_of_epoch(self, samples: int, seconds: float) -> bool:
        """Validation, LR plateau, early stopping, the epoch record; True to stop early."""
        val = self.evaluate("val")
        self.last_val = {"val_loss": val["loss"], "val_accuracy": val["accuracy"]}
        if self.schedule.end_of_epoch(self.last_val):
            self.tracker.log("lr_reduced", epoch=self.epoch, step=self.global_step,
                             lr=self.schedule.lr(self.global_step, self.epoch + 1))
        value = self.last_val[self.monitor]
        if better(value, self.best_monitored, metric_mode(self.monitor)):
            self.best_monitored = value
        stop = self.early_stopping.update(self.epoch, self.last_val, self.strategy.model)
        extra = {}
        if self.cfg.early_stopping.enabled:
            extra = {"early_stopping_best": self.early_stopping.best, "early_stopping_bad_epochs": self.early_stopping.bad_epochs}
        self.tracker.log("epoch", epoch=self.epoch, step=self.global_step,
                         train_loss=self.running_loss.mean("epoch", self.env),
                         val_loss=val["loss"], val_accuracy=val["accuracy"], lr=self.schedule.lr(self.global_step, self.epoch),
                         epoch_seconds=round(seconds, 4), samples_per_s=samples / seconds if seconds > 0 else float("nan"),
                         **{f"best_{self.monitor}": self.best_monitored}, **extra)
        self.epoch += 1
        self.step_in_epoch = 0
        return stop

    def evaluate(self, split_name: str) -> dict[str, float]:
        batches = self.data.eval_batches(split_name, EVAL_BATCH_SIZE)
        return evaluate(self.strategy.eval_model, batches, self.loss_fn, self.env)

    # ------------------------------------------------------------ decisions

    def _reached_max_steps(self) -> bool:
        return self.cfg.train.max_steps is not None and self.global_step >= self.cfg.train.max_steps

    def _stop_agreed(self) -> bool:
        """A collective: every rank calls it at the same steps."""
        return agree_any(self.stop.requested, self.env)

    def _checkpoint_due_at_epoch_end(self) -> bool:
        every = self.cfg.checkpoint.every_epochs
        return bool(every) and self.epoch % every == 0

    def _stop_for_resume(self) -> FitResult:
        by = self.stop.signal_name or "another rank"
        self.tracker.log("stop", epoch=self.epoch, step=self.global_step, signal=by)
        if self.last_saved_step != self.global_step:
            self.save_checkpoint()
        self.wait_for_checkpoint()
        return FitResult(self.strategy.model, self.global_step, self.last_val, stopped=True, stopped_by=by)

    # ------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> Path | None:
        """Collective. Rank 0 writes the shared files; each rank its own state."""
        if self.run_dir is None:
            return None
        monitor = self.cfg.checkpoint.monitor
        value = self.last_val.get(monitor)
        if value is not None and self.step_in_epoch == 0 and better(value, None if self.best_checkpoint is None
                                                                    else self.best_checkpoint[0], metric_mode(monitor)):
            self.best_checkpoint = (value, self.global_step)
        strategy = self.strategy
        state = strategy.checkpoint_state(self.env.is_rank0)  # a collective for sharded weights
        own_files: dict[str, Any] = {}
        if strategy.writes_own_files:  # DeepSpeed: its files first, on this thread (collective)
            self.wait_for_checkpoint()
            own_files = strategy.save_own_files(ckpt.prepare_checkpoint_dir(self.run_dir, self.global_step, self.env))
        shared: dict[str, Any] = {}
        if self.env.is_rank0:
            shared["model"] = state["model"]
            shared["trainer"] = {
                "optimizer": state["optimizer"], "schedule": self.schedule.state_dict(),
                "early_stopping": self.early_stopping.state_dict(),
                "progress": {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step},
                "last_val": dict(self.last_val), "best_checkpoint": list(self.best_checkpoint or []),
                "best_monitored": self.best_monitored, "last_logged_lr": self._last_logged_lr,
                "metrics_lines": self.tracker.lines, "wandb_run_id": self.wandb_run_id,
                "config": dump_yaml(self.cfg), "world_size": self.env.world_size,
                "data_source": self.cfg.data.source, "finished": self.finished}
            if self.early_stopping.best_weights is not None:
                shared["best_model"] = self.early_stopping.best_weights
        per_rank = {"rng": ckpt.rng_state(), "running_loss": self.running_loss.state_dict()}
        info = {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "finished": self.finished,
                "early_stopped": self.early_stopped, **self.last_val,
                # what a resume compares and continues with, without loading trainer.pt
                "config": to_dict(self.cfg), "strategy": self.resolved.strategy,
                "metrics_lines": None, "wandb_run_id": self.wandb_run_id}
        # logged first, so the line count the checkpoint keeps includes it
        self.tracker.log("checkpoint", epoch=self.epoch, step=self.global_step, finished=self.finished)
        after = None
        info["metrics_lines"] = self.tracker.lines  # rank 0's count is the one that matters
        if self.env.is_rank0:
            shared["trainer"]["metrics_lines"] = self.tracker.lines
            best = self.best_checkpoint[1] if self.best_checkpoint and self.cfg.checkpoint.keep_best else None
            run_dir, keep = self.run_dir, self.cfg.checkpoint.keep_last
            after = lambda path: ckpt.apply_retention(run_dir, keep, best, current=path)  # noqa: E731
        if self.checkpointer is None:
            self.checkpointer = ckpt.AsyncCheckpointer(self.env, self.cfg.dist.timeout_s)
        self.checkpointer.save(self.run_dir, self.global_step, shared, per_rank, info, after, own_files=own_files,
                               prepared=strategy.writes_own_files)
        self.last_saved_step = self.global_step
        return ckpt.checkpoint_root(self.run_dir) / f"{ckpt.PREFIX}{self.global_step:08d}"

    def wait_for_checkpoint(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.wait()

    def restore(self, info: ckpt.CheckpointInfo) -> None:
        """Continue from a checkpoint every rank agreed on."""
        trainer = ckpt.load_file(info.path, "trainer.pt")
        try:
            self.strategy.restore(info.path, ckpt.load_file(info.path, "model.pt"), trainer["optimizer"])
        except RuntimeError as exc:  # shapes or keys that do not fit: the config changed what resume compares
            first = str(exc).strip().splitlines()[0][:300]
            raise DistTrainError(f"checkpoint {info.path} does not fit the model or optimizer this config builds "
                                 f"({first}); resume with the config it was saved with, or pass --fresh") from None
        apply_hyperparameters(self.strategy.optimizer, self.cfg.optim)  # a changed optim.* applies from here on
        self.schedule.load_state_dict(trainer["schedule"])
        self.early_stopping.load_state_dict(trainer["early_stopping"], ckpt.load_file(info.path, "best_model.pt"))
        progress = trainer["progress"]
        self.epoch, self.step_in_epoch = int(progress["epoch"]), int(progress["step_in_epoch"])
        self.global_step = self.last_saved_step = int(progress["global_step"])
        self.last_val = dict(trainer["last_val"])
        best = trainer["best_checkpoint"]
        self.best_checkpoint = (float(best[0]), int(best[1])) if best else None
        self.wandb_run_id = trainer["wandb_run_id"] or self.wandb_run_id
        self.best_monitored = trainer["best_monitored"]
        self._last_logged_lr = trainer.get("last_logged_lr")
        self._previous_world_size = int(trainer["world_size"])
        same_shape = self._previous_world_size == self.env.world_size
        mine = ckpt.load_file(info.path, f"rank-{self.env.rank:05d}.pt")
        if same_shape and mine is not None:
            self._rng_to_restore = mine["rng"]
            self.running_loss.load_state_dict(mine["running_loss"])
        else:
            # A different number of workers: the sample order continues (it is a
            # function of the global batch), but dropout streams and the partial
            # loss sums cannot be split or merged exactly.
            seed_everything(rank_seed(self.cfg.train.seed + self.global_step, self.env.rank))
            first = ckpt.load_file(info.path, "rank-00000.pt")
            self.running_loss.load_state_dict(first["running_loss"], include_pending=False)
        if self.cfg.data.source == "shards" and self.step_in_epoch and not (
                same_shape and _same_shard_stream(trainer.get("config"), self.cfg)):
            # shards are dealt to ranks and readers by their number, and each
            # reader shuffles its own buffer: the epoch's position does not carry over
            self.step_in_epoch = 0

    def log_resume(self, info: ckpt.CheckpointInfo, changed: dict[str, Any] | None = None) -> None:
        """The `resume` record (after `attach_tracker`): where from, and the
        settings the run now goes on with."""
        extra = {"changed": changed} if changed else {}
        self.tracker.log("resume", checkpoint=str(info.path), epoch=self.epoch, step=self.global_step,
                         world_size=self.env.world_size, previous_world_size=self._previous_world_size, **extra)


def _same_shard_stream(stored_yaml: str | None, cfg: Config) -> bool:
    """Whether the stored run read its shards with the same readers and buffer."""
    import yaml

    stored = (yaml.safe_load(stored_yaml or "") or {}).get("data", {})
    return (stored.get("loader_workers") == cfg.data.loader_workers
            and stored.get("shuffle_buffer") == cfg.data.shuffle_buffer)
