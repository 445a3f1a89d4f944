"""Learning-rate schedules and early stopping as objects: each schedule's
values, warmup, the linear scaling rule, the plateau schedule and its state,
early stopping's patience, min_delta and mode."""

import math

import pytest
import torch

from dist_train.early_stopping import EarlyStopping
from dist_train.config import EarlyStoppingConfig, ScheduleConfig
from dist_train.schedules import LRSchedule


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
