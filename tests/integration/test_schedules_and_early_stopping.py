"""Learning-rate schedules and early stopping in training, decided from
globally reduced metrics so every rank holds the same LR and stops at the same
epoch; the LR records a run writes."""

import json
from pathlib import Path

import pytest
import torch

from dist_train.config import load_config
from dist_train.env import DistEnv
from tests.helpers import build_trainer
from tests.multiproc import run_workers


OVERRIDES = ["data.source=synthetic", "data.num_samples=400", "data.num_features=10", "data.num_classes=3",
             "model.hidden_sizes=[16]", "train.global_batch_size=32", "dist.device=cpu", "optim.lr=0.05",
             "train.epochs=40", "early_stopping.enabled=true", "early_stopping.patience=2",
             "early_stopping.restore_best=true", "schedule.name=plateau", "schedule.patience=0"]


def early_stopping_worker(env):
    cfg = load_config(None, OVERRIDES)
    trainer = build_trainer(cfg, env)
    result = trainer.fit()
    best = trainer.early_stopping.best_weights
    restored = all(torch.equal(v, best[k]) for k, v in result.network.state_dict().items())
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
