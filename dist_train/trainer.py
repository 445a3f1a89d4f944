"""The training loop, readable top to bottom: epochs of steps with checkpoints,
stop requests and non-finite guards; evaluation, LR plateau and early stopping
after each epoch; the test split at the end. The parts (data, strategy,
schedule, loss) are built elsewhere (`dist_train.parts`, which this module
never imports) and handed in; the checkpointer decides when a save is due and
what retention keeps; the data takes up a checkpoint's position itself.

Where the loop is lives in one `TrainState`. A checkpoint taken at a step
boundary holds everything the next step depends on, so a resumed run repeats
the uninterrupted one bit for bit (same world size)."""

from __future__ import annotations

import dataclasses
import enum
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dist_train.checkpoint import CheckpointInfo, CheckpointParts, Checkpointer, load_file
from dist_train.comm import Comm
from dist_train.config import Config, to_dict
from dist_train.data.loader import Batch, TrainData, TrainStep
from dist_train.early_stopping import BestWeights, EarlyStopping
from dist_train.env import DistEnv
from dist_train.errors import DistTrainError, TrainingFailed
from dist_train.metrics import RunningMean, evaluate
from dist_train.monitor import Monitor
from dist_train.optim import apply_hyperparameters
from dist_train.losses import LossFn
from dist_train.predictor import Predictor, PredictorSpec
from dist_train.resolve import Resolved
from dist_train.rng import RankStreams
from dist_train.stop_request import StopRequest
from dist_train.schedules import LRSchedule
from dist_train.strategy import Strategy, StrategyWeights
from dist_train.tracking import NullTracker, Tracker
from dist_train.train_state import TrainState
from dist_train.watchdog import WARMUP_STEPS, NoWatchdog

EVAL_BATCH_SIZE = 1024
# fp16 overflow skips in a row before the job stops as diverged (the scale would underflow)
MAX_OVERFLOW_SKIPS = 50


@dataclass
class Parts:
    """What the loop is handed, built from the config by `dist_train.parts`
    (tests and tools build their own)."""

    data: TrainData
    strategy: Strategy  # the model, wrapped for training, its optimizer and precision
    schedule: LRSchedule
    loss_fn: LossFn
    spec: PredictorSpec  # what predicting needs besides the weights (every checkpoint holds it)
    sync_batchnorm_layers: int | None = None  # batch-norm layers synchronized (model.sync_batchnorm); None: not asked


class EpochEnd(enum.Enum):
    """Why `train_epoch` returned."""

    DONE = "the epoch's last step"
    STOP = "a stop request every rank agreed on"
    MAX_STEPS = "train.max_steps"


@dataclass
class FitResult:
    #: the trained model taking raw inputs (the data source's, before normalization): a Predictor in eval mode
    model: Predictor
    steps: int
    val: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    stopped: bool = False  # a stop request was honoured: checkpoint saved, resume later
    stopped_by: str = ""  # the signal that asked (or "another rank")
    early_stopped: bool = False

    @property
    def network(self) -> nn.Module:
        """The network as trained: it takes normalized inputs."""
        return self.model.network

    def predict(self, inputs: Any) -> torch.Tensor:
        """Class indices or regression values for raw inputs (see Predictor.predict)."""
        return self.model.predict(inputs)


class Trainer:
    def __init__(self, cfg: Config, env: DistEnv, resolved: Resolved, parts: Parts, comm: Comm | None = None,
                 tracker: Tracker | None = None, run_dir: Path | None = None, stop: StopRequest | None = None,
                 watchdog: NoWatchdog | None = None) -> None:
        self.cfg, self.env, self.resolved = cfg, env, resolved
        self.comm = comm or Comm.of(env)
        self.data, self.strategy, self.schedule, self.loss_fn = parts.data, parts.strategy, parts.schedule, parts.loss_fn
        self.spec = parts.spec
        self.sync_batchnorm_layers = parts.sync_batchnorm_layers
        self.tracker = tracker or NullTracker()
        self.stop = stop or StopRequest()
        self.watchdog = watchdog or NoWatchdog()  # told of every unit of progress (dist_train.watchdog)
        self.steps_this_start = 0
        self.state = TrainState(world_size=env.world_size)
        self.early_stopping = EarlyStopping(cfg.early_stopping)
        self.running_loss = RunningMean(env.device)
        self.streams = RankStreams()
        # the metric whose best value the logs carry: early stopping's, else the checkpoints'
        es = cfg.early_stopping
        self.logged = Monitor(es.monitor, es.mode) if es.enabled else Monitor(cfg.checkpoint.monitor)
        # when to save and what to keep: the checkpointer decides (None: no checkpoints)
        self.checkpointer = (Checkpointer(run_dir, self.comm, env, cfg.dist.timeout_s, cfg.checkpoint,
                                          progress=self.watchdog.beat)
                             if run_dir is not None else None)
        self.last_grad_norm = torch.zeros(())
        self.overflow_skips = 0  # consecutive fp16 overflow skips
        self.previous_world_size: int | None = None  # of the checkpoint restored
        self._config_record = to_dict(cfg)  # in every manifest: what a resume compares

    def attach_tracker(self, tracker: Tracker) -> None:
        """Where records go from now on (made after the parts were built and the
        checkpoint loaded, so that a rejected start leaves no trace)."""
        self.tracker = tracker

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
        s, t, tracker = self.state, self.cfg.train, self.tracker
        if s.global_step == 0:
            synced = self.sync_batchnorm_layers
            tracker.log("start", world_size=self.env.world_size, global_batch_size=self.resolved.global_batch_size,
                        per_rank_batch_size=self.resolved.per_rank_batch_size, strategy=self.resolved.strategy,
                        precision=t.precision, train_samples=self.data.train_size,
                        steps_per_epoch=self.data.train.steps_per_epoch,
                        normalize=self.data.input_spec.normalize,  # the mode data.normalize resolved to
                        **({"sync_batchnorm_layers": synced} if synced is not None else {}))
            if synced == 0 and self.env.is_rank0:
                mlp = "" if self.cfg.model.class_path else " (the built-in mlp has them with model.batch_norm=true)"
                print(f"dist-train: warning: model.sync_batchnorm is true but the model has no batch-norm layer: "
                      f"nothing is synchronized{mlp}", file=sys.stderr, flush=True)
        early_stopped = False
        while s.epoch < t.epochs:
            end, _ = self.train_epoch()
            if end is EpochEnd.STOP:
                return self._stop_for_resume()
            early_stopped = self.end_of_epoch()
            if early_stopped:
                tracker.log("early_stop", epoch=s.epoch - 1, step=s.global_step, monitor=self.cfg.early_stopping.monitor,
                            best=self.early_stopping.best, best_epoch=self.early_stopping.best_epoch)
            if early_stopped or end is EpochEnd.MAX_STEPS or s.epoch >= t.epochs:
                break  # the final checkpoint, after the test split, follows
            if self.checkpointer and self.checkpointer.due_after_epoch(s.epoch):
                self.save_checkpoint()
        if self.early_stopping.restore(self.strategy.model):
            tracker.log("restore_best", epoch=self.early_stopping.best_epoch, best=self.early_stopping.best)
        test = self.evaluate("test")
        s.last_test = self._named("test", test)
        tracker.log("test", step=s.global_step, **s.last_test)
        s.finished, s.early_stopped = True, early_stopped
        self.save_checkpoint()  # the end of the run (marked finished)
        self.wait_for_checkpoint()
        return FitResult(self._predictor(), s.global_step, s.last_val, test, early_stopped=early_stopped)

    def train_epoch(self) -> tuple[EpochEnd, int]:
        """The rest of the current epoch, from `step_in_epoch`: why it ended, and
        the samples processed across all ranks (by this call; the state's
        `epoch_samples` and `epoch_seconds` count the whole epoch's, over
        every start of the job, and go into each checkpoint)."""
        s = self.state
        started, before = time.perf_counter(), s.epoch_seconds

        def clock() -> None:  # before each save, and when the call returns
            s.epoch_seconds = before + (time.perf_counter() - started)

        try:
            return self._train_steps(clock)
        finally:
            clock()

    def _train_steps(self, clock: Callable[[], None]) -> tuple[EpochEnd, int]:
        s, cfg, watchdog = self.state, self.cfg, self.watchdog
        self.strategy.train_model.train()
        self.tracker.start_epoch(s.epoch, self.data.train.steps_per_epoch, s.step_in_epoch)
        samples, checked = 0, False
        watchdog.phase = "training"
        for step in self.data.train.epoch(s.epoch, s.step_in_epoch):
            self.streams.resume()  # resumed: each rank's RNG as it was before this very step
            lr = self.schedule.apply(self.strategy.optimizer, s.global_step, s.epoch)
            self.train_step(step)
            samples += step.global_count
            s.epoch_samples += step.global_count
            s.global_step += 1
            s.step_in_epoch = step.step + 1
            watchdog.step = s.global_step
            watchdog.beat()
            self.steps_this_start += 1
            if self.steps_this_start == WARMUP_STEPS:
                watchdog.warmed_up()
            self.tracker.step()
            if cfg.train.lr_every_step and lr != s.last_logged_lr:
                # the LR of every step, recorded where it changes (a W&B row costs
                # ~0.2-0.35 ms, too much to repeat an unchanged value each step)
                self.tracker.log("lr", step=s.global_step, lr=lr)
                s.last_logged_lr = lr
            if s.global_step % cfg.train.log_every_steps == 0:
                # the loss of this epoch's steps since the last record: from_step to step
                from_step = s.loss_from_step or s.global_step - s.step_in_epoch + 1
                self.tracker.log("train", epoch=s.epoch, step=s.global_step, from_step=from_step,
                                 loss=self.running_loss.mean("interval", self.comm), lr=lr,
                                 grad_norm=float(self.last_grad_norm))
                s.loss_from_step = s.global_step + 1
            # a stop first: its own checkpoint then carries the stop record too
            checked = s.global_step % cfg.train.stop_check_every_steps == 0
            if checked and self._stop_agreed():
                return EpochEnd.STOP, samples
            if self.checkpointer and self.checkpointer.due_after_step(s.global_step):
                clock()
                self.save_checkpoint()
            if cfg.train.max_steps is not None and s.global_step >= cfg.train.max_steps:
                return EpochEnd.MAX_STEPS, samples
        if not checked and self._stop_agreed():  # before the epoch's evaluation
            return EpochEnd.STOP, samples
        return EpochEnd.DONE, samples

    def train_step(self, step: TrainStep) -> None:
        """One optimizer step over this rank's micro-batches. Each sample's loss
        is weighted by 1/(samples in the whole step), so ranks and micro-batches
        of different sizes still add up to the exact global mean. A non-finite
        loss on any rank makes non-finite gradients, which the all-reduce carries
        to every rank: all ranks see the same norm and take the same decision."""
        s, strategy = self.state, self.strategy
        last = len(step.micro_batches) - 1
        losses = [(strategy.micro_batch(b.inputs, b.targets, self.loss_fn, step.global_count, i == last),
                   b.targets.shape[0]) for i, b in enumerate(step.micro_batches)]
        result = strategy.step(self.cfg.train.grad_clip_norm)
        norm = self.last_grad_norm = result.norm
        if result.applied:
            self.overflow_skips = 0
            for loss_mean, count in losses:  # only kept steps count towards the logged loss
                self.running_loss.add(loss_mean, count)
            return
        # the weights stay as they were: no checkpoint ever holds NaN weights
        if result.overflow and self.overflow_skips < MAX_OVERFLOW_SKIPS:
            # fp16: the loss scaler skips the step and lowers the scale (normal, now and then)
            self.overflow_skips += 1
            self.tracker.log("skipped_step", epoch=s.epoch, step=s.global_step + 1, grad_norm=norm.item(),
                             reason="fp16 overflow", loss_scale=result.loss_scale)
            return
        if self.cfg.train.nonfinite == "skip":
            self.tracker.log("skipped_step", epoch=s.epoch, step=s.global_step + 1, grad_norm=norm.item())
            return
        raise TrainingFailed(
            f"non-finite loss or gradient (gradient norm {norm.item()}) at epoch {s.epoch}, global step "
            f"{s.global_step + 1}; the weights were not updated. Lower optim.lr, set train.grad_clip_norm, "
            f"check the inputs for NaN, or set train.nonfinite=skip to skip such steps")

    def end_of_epoch(self) -> bool:
        """Validation, LR plateau, early stopping, the epoch record; True to stop early."""
        s = self.state
        samples, seconds = s.epoch_samples, s.epoch_seconds
        s.last_val = self._named("val", self.evaluate("val"))
        if self.schedule.end_of_epoch(s.last_val):
            self.tracker.log("lr_reduced", epoch=s.epoch, step=s.global_step,
                             lr=self.schedule.lr(s.global_step, s.epoch + 1))
        if self.logged.improves(s.last_val[self.logged.metric], s.best_monitored):
            s.best_monitored = s.last_val[self.logged.metric]
        stop = self.early_stopping.update(s.epoch, s.last_val, self.strategy.model)
        extra = {}
        if self.cfg.early_stopping.enabled:
            extra = {"early_stopping_best": self.early_stopping.best, "early_stopping_bad_epochs": self.early_stopping.bad_epochs}
        self.tracker.log("epoch", epoch=s.epoch, step=s.global_step,
                         train_loss=self.running_loss.mean("epoch", self.comm), **s.last_val,
                         lr=self.schedule.lr(s.global_step, s.epoch),
                         epoch_seconds=round(seconds, 4), samples_per_s=samples / seconds if seconds > 0 else float("nan"),
                         **{f"best_{self.logged.metric}": s.best_monitored}, **extra)
        s.epoch += 1
        s.step_in_epoch = s.epoch_samples = 0
        s.loss_from_step = s.global_step + 1  # the epoch's mean started the interval's again
        s.epoch_seconds = 0.0
        return stop

    def evaluate(self, split_name: str) -> dict[str, float]:
        self.watchdog.phase = f"evaluating the {split_name} split"
        # every rank evaluates the weights and buffers the checkpoint holds (rank 0's)
        self.strategy.share_buffers()

        def batches() -> Any:
            found = self.data.eval_batches(split_name, EVAL_BATCH_SIZE)
            if self.strategy.sharded_forward:
                found = self._as_many_batches_as_every_rank(list(found))
            for batch in found:
                yield batch
                self.watchdog.beat()  # each batch is progress

        return evaluate(self.strategy.eval_model, batches(), self.loss_fn, self.comm, self.env.device, self.data.task,
                        self.data.num_outputs)

    def _as_many_batches_as_every_rank(self, batches: list[Batch]) -> list[Batch]:
        """A sharded model's forward gathers its parameters from every rank:
        each rank runs as many forward passes, the ranks with fewer batches
        padding with empty ones (which add nothing to the sums)."""
        most = max(self.comm.gather_object(len(batches)))
        empty = Batch(torch.empty((0, *self.data.input_shape), device=self.env.device),
                      torch.empty((0, *self.data.target_shape), device=self.env.device,
                                  dtype=self.data.task.target_dtype))
        return batches + [empty] * (most - len(batches))

    def _named(self, split: str, metrics: dict[str, float]) -> dict[str, float]:
        """val_loss, val_accuracy (or val_mse, val_mae, val_r2), ... for records and monitors."""
        return {f"{split}_{name}": metrics[name] for name in ("loss", *self.data.task.metrics)}

    # ------------------------------------------------------------ decisions

    def _stop_agreed(self) -> bool:
        """A collective: every rank calls it at the same steps."""
        return self.comm.agree_any(self.stop.requested)

    def _stop_for_resume(self) -> FitResult:
        s = self.state
        by = self.stop.signal_name or "another rank"
        self.tracker.log("stop", epoch=s.epoch, step=s.global_step, signal=by)
        if self.checkpointer and not self.checkpointer.saved(s.global_step):
            self.save_checkpoint()
        self.wait_for_checkpoint()
        return FitResult(self._predictor(), s.global_step, s.last_val, stopped=True, stopped_by=by)

    def _predictor(self) -> Predictor:
        """The trained network behind the preprocessing its data had (raw inputs
        in). A collective where the strategy shards the model."""
        return Predictor(self.strategy.plain_model(), self.spec)

    # ------------------------------------------------------------ checkpoints

    def checkpoint_parts(self) -> CheckpointParts:
        """What a checkpoint holds, by file (see dist_train.checkpoint)."""
        shared_state = {"strategy": self.strategy, "schedule": self.schedule, "early_stopping": self.early_stopping,
                        "state": self.state}
        if hasattr(self.data.train, "state_dict"):  # a data plan with state of its own (streamed shards' layout)
            shared_state["data"] = self.data.train
        return CheckpointParts(
            shared={"model.pt": StrategyWeights(self.strategy),
                    "trainer.pt": shared_state,
                    "best_model.pt": BestWeights(self.early_stopping), "predictor.pt": self.spec},
            per_rank={"rng": self.streams, "running_loss": self.running_loss},
            files=self.strategy)

    def save_checkpoint(self) -> Path | None:
        """Collective. Rank 0 writes the shared files; each rank its own state."""
        if self.checkpointer is None:
            return None
        s = self.state
        keep = self.checkpointer.best_to_keep(s)
        # logged first, so the line count the checkpoint keeps includes it
        self.tracker.log("checkpoint", epoch=s.epoch, step=s.global_step, finished=s.finished)
        info = {"epoch": s.epoch, "step_in_epoch": s.step_in_epoch, "finished": s.finished,
                "early_stopped": s.early_stopped, **s.last_val, **(s.last_test if s.finished else {}),
                # what a resume compares and continues with, without loading trainer.pt
                "config": self._config_record, "strategy": self.resolved.strategy,
                "metrics_lines": self.tracker.lines, "wandb_run_id": self.tracker.run_id}
        if hasattr(self.data.train, "layout"):  # what a resume on another number of workers streams with
            info["stream_layout"] = self.data.train.layout.state()
        phase, self.watchdog.phase = self.watchdog.phase, f"saving the checkpoint of step {s.global_step}"
        path = self.checkpointer.save(s.global_step, self.checkpoint_parts(), info, keep)
        self.watchdog.phase = phase
        return path

    def wait_for_checkpoint(self) -> None:
        if self.checkpointer is not None:
            phase, self.watchdog.phase = self.watchdog.phase, "waiting for a checkpoint save to finish"
            self.checkpointer.wait()
            self.watchdog.phase = phase

    def restore(self, info: CheckpointInfo) -> None:
        """Continue from a checkpoint every rank agreed on."""
        s = self.state
        checkpointer = self.checkpointer or Checkpointer(info.path.parent.parent, self.comm, self.env,
                                                         self.cfg.dist.timeout_s)
        try:
            own = checkpointer.load(info, self.checkpoint_parts())
        except (RuntimeError, KeyError) as exc:  # shapes or keys that do not fit what this config builds
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise DistTrainError(f"checkpoint {info.path} does not fit the model or optimizer this config builds "
                                 f"({first}); resume with the config it was saved with, or pass --fresh") from None
        # a changed optim.* applies from here on
        apply_hyperparameters(self.strategy.optimizer, self.cfg.optim, self.env.device)
        # the data takes up the run's position (its stream layout, or the epoch again in another order)
        s.step_in_epoch = self.data.train.resume_at(info.manifest, s.step_in_epoch)
        if s.step_in_epoch == 0:  # the epoch starts again (or had not begun): its count too
            s.epoch_samples, s.epoch_seconds = 0, 0.0
        self.previous_world_size, s.world_size = s.world_size, self.env.world_size
        if not own:
            # A different number of workers: the sample order continues (it is a
            # function of the global batch), but dropout streams and the partial
            # loss sums cannot be split or merged exactly.
            self.streams.reseed(self.cfg.train.seed + s.global_step, self.env.rank)
            first_rank = load_file(info.path, "rank-00000.pt")
            self.running_loss.load_state_dict(first_rank["running_loss"], include_pending=False)
        # the schedule spans the run's epochs as its data plan counts them (a stream layout may count them differently)
        total = self.cfg.train.epochs * self.data.train.steps_per_epoch
        self.schedule.total_steps = max(min(total, self.cfg.train.max_steps or total), 1)

    def log_resume(self, info: CheckpointInfo, changed: dict[str, Any] | None = None) -> None:
        """The `resume` record (after `attach_tracker`): where from, and the
        settings the run now goes on with."""
        s = self.state
        extra = {"changed": changed} if changed else {}
        self.tracker.log("resume", checkpoint=str(info.path), epoch=s.epoch, step=s.global_step,
                         world_size=self.env.world_size, previous_world_size=self.previous_world_size, **extra)
