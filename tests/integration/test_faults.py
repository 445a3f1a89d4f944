"""Surviving faults with real worker processes over gloo: NaN on one rank
(every rank stops, or the step is skipped), a different number of workers on
resume."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from dist_train.checkpoint import list_checkpoints
from dist_train.config import load_config
from dist_train.data.loader import InMemoryData
from dist_train.data.sampler import ShardedBatchPlan
from dist_train.tracking import Tracker
from dist_train.data.sources import build_splits
from dist_train.env import DistEnv
from dist_train.errors import TrainingFailed
from dist_train.resolve import resolve
from tests.helpers import build_trainer
from tests.conftest import REPO
from tests.multiproc import run_workers


# ------------------------------------------------------------ non-finite values

NAN = ["data.source=synthetic", "data.num_samples=300", "data.num_features=8", "data.num_classes=3",
       "model.hidden_sizes=[8]", "train.global_batch_size=32", "train.epochs=2", "dist.device=cpu",
       "checkpoint.every_steps=2"]


def nan_worker(env, mode, run_dir, strategy=()):
    cfg = load_config(None, [*NAN, f"train.nonfinite={mode}", f"run.dir={run_dir}", *strategy])
    resolved = resolve(cfg, env.world_size)
    splits = build_splits(cfg.data)
    splits.train.inputs[17, 3] = float("nan")  # one sample: it lands on exactly one rank
    data = InMemoryData(splits, env, resolved.global_batch_size, 1, cfg.train.seed, False)
    owner = [r for r in range(env.world_size)
             if any(17 in m.tolist() for s in ShardedBatchPlan(len(splits.train), 32, env.world_size, r, 0).epoch(0)
                    for m in s.micro_indices)]
    tracker = Tracker(Path(run_dir), console=None) if env.is_rank0 else None
    trainer = build_trainer(cfg, env, data=data, tracker=tracker, run_dir=Path(run_dir))
    try:
        result = trainer.fit()
        outcome = ("finished", result.steps)
    except TrainingFailed as exc:
        outcome = ("failed", str(exc))
    weights_finite = all(torch.isfinite(v).all() for v in trainer.strategy.model_state_dict().values())
    return {"outcome": outcome, "owner": owner, "finite": bool(weights_finite)}


STRATEGIES = [pytest.param((), id="ddp"),
              pytest.param(("strategy.name=deepspeed", "strategy.zero_stage=2"), id="deepspeed-zero2",
                           marks=pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                                    reason="DeepSpeed is not installed (pip install -e '.[deepspeed]')"))]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_nan_on_one_rank_stops_every_rank_with_a_message(tmp_path, strategy):
    r0, r1 = run_workers(nan_worker, 2, "stop", str(tmp_path), strategy, timeout_s=120)
    assert len(r0["owner"]) == 1  # the NaN sample sat on one rank only
    assert r0["outcome"][0] == r1["outcome"][0] == "failed"
    assert "non-finite loss or gradient" in r0["outcome"][1] and "train.nonfinite=skip" in r0["outcome"][1]
    assert r0["outcome"][1] == r1["outcome"][1]  # same step, same words
    assert r0["finite"] and r1["finite"]
    for path in list_checkpoints(tmp_path):  # no checkpoint holds NaN weights
        weights = torch.load(path / "model.pt", weights_only=True)
        assert all(torch.isfinite(v).all() for v in weights.values())


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_nan_steps_can_be_skipped(tmp_path, strategy):
    r0, r1 = run_workers(nan_worker, 2, "skip", str(tmp_path), strategy, timeout_s=120)
    assert r0["outcome"] == r1["outcome"] and r0["outcome"][0] == "finished"
    assert r0["finite"]
    skipped = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
               if '"skipped_step"' in line]
    assert len(skipped) == 2  # the NaN sample is in one step of each of the 2 epochs


# ------------------------------------------------------------ a different number of workers

def resize_worker(env, run_dir, stop_after):
    from dist_train.run import run
    from tests.helpers import sigterm_at

    cfg = load_config(f"{REPO}/configs/cpu_test.yaml", [f"run.dir={run_dir}", "checkpoint.every_steps=4",
                                                        "train.stop_check_every_steps=1", "schedule.name=cosine"])
    return run(cfg, env, sigterm_at(stop_after)) if stop_after else run(cfg, env)


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)])
def test_resume_with_a_different_number_of_workers_continues_the_epoch(tmp_path, before, after):
    def go(world, stop_after):
        if world == 1:
            return [resize_worker(DistEnv(), str(tmp_path), stop_after)]
        return run_workers(resize_worker, 2, str(tmp_path), stop_after, timeout_s=120)

    assert go(before, 20) == [75] * before  # stopped mid-epoch 2 (14 steps per epoch)
    assert go(after, 0) == [0] * after
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    resume = [e for e in events if e["event"] == "resume"][-1]
    assert (resume["previous_world_size"], resume["world_size"]) == (before, after)
    assert resume["epoch"] == 1 and resume["step"] == 20
    lr_steps = [e["step"] for e in events if e["event"] == "lr"]
    assert lr_steps == list(range(1, 43))  # the LR changes every step: each step once, none repeated or skipped
    assert [e["step"] for e in events if e["event"] == "epoch"] == [14, 28, 42]
    assert [e for e in events if e["event"] == "test"][0]["test_accuracy"] > 0.9
