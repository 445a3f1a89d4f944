"""Every guarantee holds for your own model and data (real gloo workers): N
workers == 1 process with synchronized batch norm, bit-exact mid-epoch resume,
every sample once per epoch with a ragged last batch, regression, DeepSpeed,
`dist-train check`."""

import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest
import torch

from dist_train.config import load_config
from dist_train.env import DistEnv
from dist_train.errors import EXIT_RESUME
from dist_train.run import run
from tests.helpers import build_trainer
from launcher.tools.check import run_checks
from tests.conftest import REPO
from tests.helpers import assert_same_final_state, final_state, sigterm_at
from tests.multiproc import run_workers, to_numpy

DATA = f"{REPO}/tests/user_project/data.py"
EXAMPLE_NET = f"{REPO}/examples/residual_mlp/nets.py:ResidualMLP"  # docs/your-own-model-and-data.md's example, with batch norm
# 203 training samples, global batch 32: 6 full steps and one of 11, split 6/5 over 2 ranks
USER = ["data.source=custom", f"data.class_path={DATA}:make_splits", "data.loader_workers=0",
        f"model.class_path={EXAMPLE_NET}", "model.init_args={width: 16, blocks: 2, dropout: 0.0}",
        "model.sync_batchnorm=true", "data.normalize=per_feature", "optim.name=adam", "optim.lr=0.01",
        "train.global_batch_size=32", "train.epochs=2", "dist.device=cpu", "wandb.mode=disabled"]


def trained(env, overrides):
    cfg = load_config(None, [*USER, *overrides])
    result = build_trainer(cfg, env).fit()
    return {"weights": {k: v.detach().clone() for k, v in result.network.state_dict().items()}, "test": result.test}


def test_two_workers_equal_one_process_for_a_user_model_with_batch_norm_and_a_custom_dataset():
    alone = to_numpy(trained(DistEnv(), []))
    ranks = run_workers(trained, 2, ["data.loader_workers=2"], timeout_s=180)
    for rank, result in enumerate(ranks):
        for key, value in alone["weights"].items():
            diff = np.max(np.abs(result["weights"][key] - value)) if value.size else 0.0
            assert diff <= 1e-5, f"rank {rank}, {key}: max |diff| {diff:.3g}"  # running stats included
        assert result["test"]["accuracy"] == alone["test"]["accuracy"]
    moved = np.max(np.abs(alone["weights"]["head.weight"] - to_numpy(trained(DistEnv(), ["train.max_steps=1",
                                                                                           "optim.lr=1e-12"]))
                          ["weights"]["head.weight"]))
    assert moved > 1e-3  # training moved the weights: not two untouched initializations


def resume_jobs(env, root, loader_workers):
    found = {}
    for name, stop in (("whole", None), ("broken", 9)):  # step 9: mid-epoch 2 (7 steps an epoch)
        overrides = [*USER, "model.init_args={width: 16, blocks: 1, dropout: 0.3}", "train.epochs=3",
                     "train.stop_check_every_steps=1", "checkpoint.every_steps=4", "schedule.name=cosine",
                     f"data.loader_workers={loader_workers}", f"run.dir={Path(root) / name}"]
        if stop:
            assert run(load_config(None, overrides), env, sigterm_at(stop)) == EXIT_RESUME
        assert run(load_config(None, overrides), env) == 0
        found[name] = final_state(Path(root) / name)
    return found


def assert_identical(found):
    assert_same_final_state(found["whole"], found["broken"], 21)


def test_resume_is_bit_exact_mid_epoch_for_a_user_model_and_a_custom_dataset(tmp_path):
    assert_identical(resume_jobs(DistEnv(), str(tmp_path / "one"), 0))
    assert_identical(run_workers(resume_jobs, 2, str(tmp_path / "two"), 2, timeout_s=300)[0])


def epoch_indices(env, loader_workers, accum):
    cfg = load_config(None, [*USER, "data.normalize=none", f"data.loader_workers={loader_workers}",
                             f"train.grad_accum_steps={accum}", "data.init_args={tag_index: true}"])
    data = build_trainer(cfg, env).data
    epochs = []
    for epoch in range(2):
        steps = [([int(v) for b in s.micro_batches for v in b.inputs[:, 0].tolist()], s.global_count)
                 for s in data.train.epoch(epoch)]
        epochs.append(steps)
    return epochs


@pytest.mark.parametrize("loader_workers, accum", [(0, 1), (2, 2)])
def test_every_sample_once_per_epoch_with_a_ragged_last_batch(loader_workers, accum):
    r0, r1 = run_workers(epoch_indices, 2, loader_workers, accum, timeout_s=180)
    orders = []
    for epoch in range(2):
        assert len(r0[epoch]) == len(r1[epoch]) == 7  # every rank takes every step
        seen = [i for steps in (r0[epoch], r1[epoch]) for ids, _ in steps for i in ids]
        assert sorted(seen) == list(range(203))  # each sample exactly once
        assert [c for _, c in r0[epoch]] == [32] * 6 + [11]  # the global count the exact-mean loss divides by
        assert (len(r0[epoch][-1][0]), len(r1[epoch][-1][0])) == (6, 5)  # the ragged last step, split
        orders.append([i for ids, _ in r0[epoch] for i in ids])
    assert orders[0] != orders[1]  # a new order every epoch


def test_getitems_fetches_a_whole_micro_batch():
    cfg = load_config(None, [*USER, "train.grad_accum_steps=2", "data.normalize=none"])
    data = build_trainer(cfg, DistEnv()).data
    before = data.train_set.getitems_calls
    steps = list(data.train.epoch(0))
    assert data.train_set.getitems_calls - before == sum(len(s.micro_batches) for s in steps) == 14


def regression(env):
    cfg = load_config(None, ["data.source=diabetes", "data.normalize=per_feature", "train.loss=huber",
                             "model.hidden_sizes=[16]", "train.global_batch_size=32", "train.epochs=3",
                             "optim.lr=0.01", "dist.device=cpu", "early_stopping.enabled=true",
                             "early_stopping.monitor=val_r2", "schedule.name=plateau", "schedule.monitor=val_mae"])
    result = build_trainer(cfg, env).fit()
    return {"weights": dict(result.network.state_dict()), "val": result.val, "test": result.test}


def test_regression_on_two_workers_equals_one_process_with_exact_metrics():
    alone = to_numpy(regression(DistEnv()))
    assert set(alone["val"]) == {"val_loss", "val_mse", "val_mae", "val_r2"}
    for result in run_workers(regression, 2, timeout_s=180):
        for key, value in alone["weights"].items():
            assert np.max(np.abs(result["weights"][key] - value)) <= 1e-5, key
        for key, value in alone["test"].items():
            assert result["test"][key] == pytest.approx(value, rel=1e-6), key  # weights within 1e-5


def deepspeed_weights(env, stage):
    overrides = ["model.sync_batchnorm=false"] + (["strategy.name=deepspeed", f"strategy.zero_stage={stage}"]
                                                   if stage is not None else [])
    return trained(env, overrides)["weights"]


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed is not installed")
def test_deepspeed_zero2_trains_a_user_model_as_ddp_does():
    ddp, zero = run_workers(deepspeed_weights, 2, None, timeout_s=240)[0], run_workers(deepspeed_weights, 2, 2,
                                                                                    timeout_s=240)[0]
    for key, value in ddp.items():
        assert np.max(np.abs(zero[key] - value)) <= 1e-5, key


def test_check_runs_on_a_user_model():
    out = io.StringIO()
    code = run_checks(load_config(None, [*USER, "model.init_args={width: 32, blocks: 1, dropout: 0.3}"]), subset=40,
                      max_steps=300, out=out)
    text = out.getvalue()
    assert code == 0, text
    assert "PASS  initial loss" in text and "PASS  overfit 40 examples" in text and "PASS  gradcheck" in text


def test_a_model_given_as_an_object_trains_through_the_python_api(tmp_path):
    import dist_train
    from tests.user_project.data import make_splits

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    result = dist_train.fit({"train": {"epochs": 5, "global_batch_size": 32}, "optim": {"lr": 0.02},
                             "dist": {"device": "cpu"},
                             "data": {"loader_workers": 0, "normalize": "per_feature"}},
                            f"run.dir={tmp_path}", "wandb.mode=disabled", model=model, data=make_splits())
    assert result.network is model and result.steps == 35 and result.test["accuracy"] > 0.75  # chance: 1/3
    assert dist_train.fit({"dist": {"device": "cpu"}}, f"run.dir={tmp_path}", "train.epochs=5", "optim.lr=0.02",
                          "wandb.mode=disabled", "train.global_batch_size=32", "data.loader_workers=0",
                          "data.normalize=per_feature", model=model, data=make_splits()) is None  # finished: nothing to do
