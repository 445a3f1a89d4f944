"""Learning-rate schedules and early stopping, decided from globally reduced
metrics so every rank holds the same LR and stops at the same epoch."""

import json
import math
from pathlib import Path

import pytest
import torch

from dist_train.early_stopping import EarlyStopping
from dist_train.config import EarlyStoppingConfig, ScheduleConfig, load_config
from dist_train.env import DistEnv
from dist_train.resolve import resolve
from dist_train.schedules import LRSchedule
from dist_train.trainer import Trainer
from tests.multiproc import run_workers


def lrs(cfg, steps_per_epoch=10, epochs=5, lr=0.1, batch=64):
    sched = LRSchedule(cfg, lr, batch, steps_per_epoch * epochs)
    return [sched.lr(e * steps_per_epoch + s, e) for e in range(epochs) for s in range(steps_per_epoch)]


def test_constant_step_multistep_exponential():
    assert set(lrs(ScheduleConfig())) == {0.1}
    step = lrs(ScheduleConfig(name="step", step_size_epochs=2, gamma=0.5))
    assert step[0] == step[19] == 0.1 and step[20] == 0.05 and step[49] == 0.025
    multi = lrs(ScheduleConfig(name="multistep", milestones_epochs=(1, 3), gamma=0.1))
    assert multi[9] == 0.1 and multi[10] == pytest.approx(0.01) and multi[30] == pytest.approx(0.001)
    exp = lrs(ScheduleConfig(name="exponential", gamma=0.9))
    assert exp[10] == pytest.approx(0.09) and exp[40] == pytest.approx(0.1 * 0.9 ** 4)


def test_cosine_with_linear_warmup():
    values = lrs(ScheduleConfig(name="cosine", warmup_steps=5, min_lr=0.001))
    cosine = [0.001 + (0.1 - 0.001) * 0.5 * (1 + math.cos(math.pi * s / 50)) for s in range(50)]
    assert values[:5] == pytest.approx([cosine[s] * (s + 1) / 5 for s in range(5)])  # warmup x cosine
    assert values[5:] == pytest.approx(cosine[5:])
    assert max(values) <= 0.1 and values[-1] == pytest.approx(0.001, abs=2e-4)  # down to the floor
    assert all(a >= b for a, b in zip(values[5:], values[6:]))  # then decaying


def test_linear_scaling_rule():
    cfg = ScheduleConfig(scale_lr=True, reference_batch_size=256, warmup_steps=4)
    values = lrs(cfg, batch=1024)
    assert values[3] == pytest.approx(0.4) and values[0] == pytest.approx(0.1)


def test_plateau_halves_after_patience_epochs_without_improvement():
    sched = LRSchedule(ScheduleConfig(name="plateau", patience=1), 0.1, 64, 100)
    reduced = [sched.end_of_epoch({"val_loss": v}) for v in (1.0, 0.9, 0.95, 0.95, 0.95, 0.8, 0.85, 0.85)]
    assert reduced == [False, False, False, True, False, False, False, True]
    assert sched.lr(0, 0) == pytest.approx(0.025)
    state = sched.state_dict()
    other = LRSchedule(ScheduleConfig(name="plateau", patience=1), 0.1, 64, 100)
    other.load_state_dict(state)
    assert other.lr(0, 0) == sched.lr(0, 0)


def test_early_stopping_patience_min_delta_and_mode():
    stopper = EarlyStopping(EarlyStoppingConfig(enabled=True, monitor="val_accuracy", patience=2, min_delta=0.01))
    model = torch.nn.Linear(2, 2)
    # 0.605 and 0.61 are not better than 0.6 by more than min_delta: two bad epochs
    decisions = [stopper.update(e, {"val_accuracy": a}, model) for e, a in enumerate((0.5, 0.6, 0.605, 0.61))]
    assert decisions == [False, False, False, True]
    assert stopper.best == 0.6 and stopper.best_epoch == 1 and stopper.monitor.mode == "max"


OVERRIDES = ["data.source=synthetic", "data.num_samples=400", "data.num_features=10", "data.num_classes=3",
             "model.hidden_sizes=[16]", "train.global_batch_size=32", "dist.device=cpu", "optim.lr=0.05",
             "train.epochs=40", "early_stopping.enabled=true", "early_stopping.patience=2",
             "early_stopping.restore_best=true", "schedule.name=plateau", "schedule.patience=0"]


def early_stopping_worker(env):
    cfg = load_config(None, OVERRIDES)
    trainer = Trainer.build(cfg, env)
    result = trainer.fit()
    best = trainer.early_stopping.best_weights
    restored = all(torch.equal(v, best[k]) for k, v in result.model.state_dict().items())
    return {"epochs": trainer.state.epoch, "early": result.early_stopped, "lr": trainer.strategy.optimizer.param_groups[0]["lr"],
            "restored": restored, "best_epoch": trainer.early_stopping.best_epoch}


def test_all_ranks_stop_together_with_the_same_lr_and_restore_the_best_weights():
    r0, r1 = run_workers(early_stopping_worker, 2, timeout_s=180)
    assert r0 == r1  # same epoch, same decision, same LR on both ranks
    assert r0["early"] and r0["epochs"] < 40 and r0["restored"]
    assert r0["epochs"] == r0["best_epoch"] + 1 + 2  # stopped `patience` epochs after the best
    assert r0["lr"] < 0.05  # the plateau schedule halved it on the way


def test_lr_is_logged_every_step(tmp_path):
    from dist_train.run import run

    cfg = load_config(None, OVERRIDES[:8] + ["train.epochs=2", "schedule.name=cosine", f"run.dir={tmp_path}"])
    assert run(cfg, DistEnv()) == 0
    events = [json.loads(line) for line in (Path(tmp_path) / "metrics.jsonl").read_text().splitlines()]
    lr_steps = [e["step"] for e in events if e["event"] == "lr"]
    last = [e for e in events if e["event"] == "test"][0]["step"]
    assert lr_steps == list(range(1, last + 1))


def test_an_unchanged_lr_is_recorded_once_and_each_change_at_its_step(tmp_path):
    """Constant LR halved by the plateau schedule: the `lr` records are the first
    step and the steps after each halving, which gives every step's LR exactly."""
    from dist_train.run import run

    cfg = load_config(None, OVERRIDES + ["train.epochs=6", f"run.dir={tmp_path}"])
    assert run(cfg, DistEnv()) == 0
    events = [json.loads(line) for line in (Path(tmp_path) / "metrics.jsonl").read_text().splitlines()]
    lr_records = [(e["step"], e["lr"]) for e in events if e["event"] == "lr"]
    reductions = [e for e in events if e["event"] == "lr_reduced"]
    assert reductions, "the plateau schedule should have halved the LR at least once in this run"
    assert lr_records[0] == (1, 0.05)
    last_step = [e for e in events if e["event"] == "test"][0]["step"]
    assert len(lr_records) == 1 + len([r for r in reductions if r["step"] < last_step])
    for (step, lr), (_, previous) in zip(lr_records[1:], lr_records):
        assert lr == pytest.approx(previous / 2)
    # every step's LR as the train records saw it matches the last lr record at or before it
    for train in (e for e in events if e["event"] == "train"):
        assert train["lr"] == [lr for step, lr in lr_records if step <= train["step"]][-1]
