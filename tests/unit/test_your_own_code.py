"""Your own model and data named in a config: class_path resolution, the
arguments passed, and every mistake found before the first step with a
message naming the config key (tests/user_project holds the user's files)."""

import math
import sys

import numpy as np
import pytest
import torch
import yaml

from dist_train.comm import Comm
from dist_train.config import load_config
from dist_train.data import build_data
from dist_train.data.loader import Batch
from dist_train.env import DistEnv
from dist_train.errors import ConfigError
from dist_train.losses import build_loss
from dist_train.metrics import evaluate
from dist_train.models import build_model, check_outputs
from dist_train.parts import build_parts
from dist_train.preflight import check_job
from dist_train.resolve import resolve
from tests.conftest import REPO

PROJECT = f"{REPO}/tests/user_project"
NETS, DATA = f"{PROJECT}/nets.py", f"{PROJECT}/data.py"
CUSTOM = ["data.source=custom", f"data.class_path={DATA}:make_splits", "data.loader_workers=0", "dist.device=cpu"]


def parts(*overrides):
    cfg = load_config(None, [*CUSTOM, *overrides])
    return build_parts(cfg, DistEnv(), resolve(cfg, 1), Comm())


def test_a_model_file_is_found_from_the_current_directory_and_given_what_it_asks_for(tmp_path, monkeypatch):
    (tmp_path / "nets.py").write_text(open(NETS).read())
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "run.yaml").write_text(yaml.safe_dump({"model": {"class_path": "nets.py:SmallBNNet",
                                                                             "init_args": {"width": 7}}}))
    monkeypatch.chdir(tmp_path)  # the one rule for relative paths: from where the command runs
    cfg = load_config("configs/run.yaml", [])
    assert cfg.model.class_path == f"{tmp_path}/nets.py:SmallBNNet"  # absolute: every worker finds the same file
    model = build_model(cfg.model, (1, 8, 8), 10)
    assert type(model).__name__ == "SmallBNNet" and model.body[1].in_features == 64 and model.body[1].out_features == 7
    assert model.body[-1].out_features == 10  # num_classes passed because __init__ asks for it


def test_a_relative_path_that_is_not_there_says_which_directory_it_was_taken_from(tmp_path, monkeypatch):
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "nets.py").write_text(open(NETS).read())
    (tmp_path / "project" / "run.yaml").write_text(yaml.safe_dump({"model": {"class_path": "nets.py:SmallBNNet"}}))
    monkeypatch.chdir(tmp_path)
    # beside the config (where dist-train looked before): named, with what to write
    with pytest.raises(ConfigError, match=rf"config key 'model.class_path': file 'nets.py' is not in the current "
                                          rf"directory {tmp_path} .* \(hint: write model.class_path: "
                                          rf"project/nets.py:SmallBNNet\)"):
        load_config("project/run.yaml", [])
    with pytest.raises(ConfigError, match=rf"file '{tmp_path}/gone.py' does not exist"):
        build_model(load_config(None, ["model.class_path=gone.py:Net"]).model, (4,), 3)
    from dist_train.data.shards import load_manifest
    from dist_train.errors import DistTrainError

    with pytest.raises(DistTrainError, match=rf"data.path 'data/x' \(a relative path, taken from the current "
                                             rf"directory {tmp_path}\) is not a directory"):
        load_manifest("data/x")
    from dist_train.checkpoint import verify_checkpoint

    with pytest.raises(DistTrainError, match=rf"checkpoint runs/a/checkpoints/step-9 \(a relative path, taken from "
                                             rf"the current directory {tmp_path}\) does not exist"):
        verify_checkpoint("runs/a/checkpoints/step-9")


def test_an_import_path_and_a_factory_function_work_too():
    sys.path.insert(0, REPO)
    try:
        cfg = load_config(None, ["model.class_path=tests.user_project.nets.regressor", "model.init_args={width: 5}"])
        model = build_model(cfg.model, (4,), 2, task="regression")  # num_outputs: the factory asks for it
        assert model(torch.zeros(3, 4)).shape == (3, 2)
    finally:
        sys.path.remove(REPO)


@pytest.mark.parametrize("overrides, key, words", [
    (["model.class_path=no_such_pkg.nets.Net"], "model.class_path",
     "cannot import module 'no_such_pkg.nets' to find 'Net' (No module named 'no_such_pkg')"),
    ([f"model.class_path={NETS}:Missing"], "model.class_path", "has no 'Missing' (hint: it defines: Needs, SmallBNNet"),
    ([f"model.class_path={PROJECT}/gone.py:Net"], "model.class_path", "does not exist"),
    ([f"model.class_path={NETS}:SmallBNNet", "model.init_args={widht: 3}"], "model.init_args.widht",
     "is not a parameter of SmallBNNet (hint: it takes: input_shape, num_classes, width, dropout)"),
    ([f"model.class_path={NETS}:Needs"], "model.init_args", "does not give 'depth', which Needs needs"),
    ([f"model.class_path={NETS}:not_a_module"], "model.class_path", "returned a str, not a torch nn.Module"),
    ([f"model.class_path={NETS}:wrong_outputs"], "model.class_path",
     "the model's outputs have shape (2, 4) for a batch of 2, but the targets need (2, 3)"),
    ([f"data.class_path={DATA}:not_three"], "data.class_path", "returned a list of 1, not the train, validation and test"),
    ([f"data.class_path={DATA}:raising"], "data.class_path",
     "calling raising(**init_args) failed: ValueError: cannot read 10 samples from /nowhere "
     "(at tests/user_project/data.py:56 in raising)"),
    ([f"data.class_path={DATA}:bad_items"], "data.class_path", "the train split's item 0 is a dict"),
    ([f"data.class_path={DATA}:failing_item"], "data.class_path",
     "reading the train split's item 5 failed: FileNotFoundError: sample-5.png (at tests/user_project/data.py:"),
    ([f"data.class_path={DATA}:failing_item", "data.init_args={bad: 1, split: val}"], "data.class_path",
     "reading the val split's item 1 failed: FileNotFoundError: sample-1.png"),
    ([f"data.class_path={DATA}:ragged_item"], "data.class_path",
     "the train split's item 0 and the train split's item 7 have inputs of different shapes ((3,) and (4,))"),
    ([f"data.class_path={DATA}:make_splits", "data.init_args={n_train: 0}"], "data.class_path",
     "the train split from make_splits is empty"),
])
def test_each_mistake_in_your_code_is_named_before_the_first_step(overrides, key, words):
    with pytest.raises(ConfigError) as info:
        parts(*overrides)
    assert info.value.key == key and words in str(info.value), str(info.value)


@pytest.mark.parametrize("overrides, key, words", [
    ([f"model.class_path={NETS}:SmallBNNet", "model.hidden_sizes=[8]"], "model.hidden_sizes",
     "is set but model.class_path builds the model"),
    (["model.init_args={width: 3}"], "model.init_args", "model.class_path is empty"),
    (["data.source=custom"], "data.class_path", "is empty but data.source is 'custom'"),
    ([f"data.class_path={DATA}:make_splits"], "data.class_path", "is set but data.source is not 'custom'"),
    (["model.class_path=not a path"], "model.class_path", "is neither an import path nor a file and a name"),
])
def test_config_rules_for_class_paths(overrides, key, words):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert info.value.key == key and words in str(info.value)


def test_a_launcher_finds_an_unimportable_class_path_without_building_anything():
    cfg = load_config(None, [*CUSTOM[:1], "data.class_path=nowhere_at_all.make", "dist.device=cpu"])
    with pytest.raises(ConfigError, match="data.class_path.*cannot import module 'nowhere_at_all'"):
        check_job(cfg, 2)


def test_a_custom_dataset_tells_its_task_classes_and_shapes():
    data = parts(f"model.class_path={NETS}:SmallBNNet").data
    assert (data.task, data.num_classes, data.num_outputs, data.input_shape) == ("classification", 3, 3, (6,))
    regression = parts(f"model.class_path={NETS}:regressor", "data.init_args={regression: true}", "train.loss=mse").data
    assert (regression.task, regression.num_classes, regression.num_outputs) == ("regression", 0, 1)


def test_the_loss_and_monitors_must_fit_the_task():
    with pytest.raises(ConfigError, match="train.loss.*'cross_entropy' does not fit.*real values.*mse, l1, huber"):
        check_job(load_config(None, ["data.source=diabetes"]), 1)
    with pytest.raises(ConfigError, match="early_stopping.monitor.*'val_accuracy' is not measured for regression"):
        check_job(load_config(None, ["data.source=diabetes", "train.loss=mse", "early_stopping.monitor=val_accuracy"]), 1)
    with pytest.raises(ConfigError, match="train.loss.*'huber' does not fit.*class indices"):
        check_job(load_config(None, ["train.loss=huber"]), 1)
    with pytest.raises(ConfigError, match="train.loss.*'l1'"):  # a custom source: found when its data is built
        parts(f"model.class_path={NETS}:SmallBNNet", "train.loss=l1")


def test_regression_losses_and_metrics_against_their_formulas():
    outputs = torch.tensor([[1.0, 2.0], [0.5, -1.0], [2.0, 0.0]])
    targets = torch.tensor([[0.0, 2.0], [1.5, -1.5], [2.0, 1.0]])
    error = outputs - targets
    assert torch.allclose(build_loss("mse", "regression")(outputs, targets, reduction="none"), (error ** 2).mean(1))
    assert torch.allclose(build_loss("l1", "regression")(outputs, targets, reduction="none"), error.abs().mean(1))
    huber = torch.nn.functional.huber_loss(outputs, targets, reduction="none").mean(1)
    assert torch.allclose(build_loss("huber", "regression")(outputs, targets), huber.sum())
    model = torch.nn.Identity()
    batches = [Batch(outputs[:2], targets[:2]), Batch(outputs[2:], targets[2:])]
    got = evaluate(model, batches, build_loss("mse", "regression"), Comm(), "cpu", "regression", 2)
    y, p = targets.double().numpy(), outputs.double().numpy()
    r2 = np.mean([1 - ((y[:, j] - p[:, j]) ** 2).sum() / ((y[:, j] - y[:, j].mean()) ** 2).sum() for j in range(2)])
    assert got["mse"] == pytest.approx(((y - p) ** 2).mean()) and got["mae"] == pytest.approx(np.abs(y - p).mean())
    assert got["r2"] == pytest.approx(r2) and got["loss"] == pytest.approx(((y - p) ** 2).mean())
    # one value per sample: (N,) targets against (N, 1) outputs
    single = evaluate(model, [Batch(outputs[:, :1], targets[:, 0])], build_loss("mse", "regression"), Comm(), "cpu",
                      "regression", 1)
    assert single["mse"] == pytest.approx(((y[:, 0] - p[:, 0]) ** 2).mean())


def test_a_model_is_checked_with_one_forward_pass():
    model = torch.nn.Linear(4, 3)
    check_outputs(model, torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), "classification", 3)
    with pytest.raises(ConfigError, match="forward pass on inputs of shape \\(2, 5\\) failed"):
        check_outputs(model, torch.zeros(2, 5), torch.zeros(2, dtype=torch.long), "classification", 3)
    check_outputs(torch.nn.Sequential(torch.nn.Linear(4, 1), torch.nn.Flatten(0)), torch.zeros(2, 4), torch.zeros(2),
                  "regression", 1)  # (N,) outputs for one real value per sample


def test_built_in_tabular_sources_load_without_download():
    for source, task, shape in (("breast_cancer", "classification", (30,)), ("wine", "classification", (13,)),
                                ("diabetes", "regression", (10,))):
        cfg = load_config(None, [f"data.source={source}", "data.normalize=per_feature",
                                 *(["train.loss=mse"] if task == "regression" else [])])
        data = build_data(cfg, DistEnv(), resolve(cfg, 1), Comm())
        assert (data.task, data.input_shape) == (task, shape)
        assert math.isclose(float(data.splits.train.inputs.mean()), 0.0, abs_tol=1e-5)  # per-feature normalized


def test_a_sweep_searches_over_your_models_init_args(tmp_path, monkeypatch):
    import io

    from launcher.tools.sweep.scheduler import SweepScheduler
    from launcher.tools.sweep.spec import load_sweep
    from launcher.tools.sweep.trials import trial_config

    (tmp_path / "nets.py").write_text(open(NETS).read())
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"model": {"class_path": "nets.py:SmallBNNet",
                                                                  "init_args": {"width": 8, "dropout": 0.1}}}))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({
        "base": "base.yaml", "method": "grid", "space": {"model.init_args.width": {"choice": [8, 32]}},
        "out_dir": str(tmp_path / "out")}))
    monkeypatch.chdir(tmp_path)  # relative paths, the sweep's base among them: from where the command runs
    spec = load_sweep("sweep.yaml")
    out = io.StringIO()
    assert SweepScheduler(spec, out=out).dry_run() == 0
    configs = [trial_config(spec.base, spec.name, spec.out_dir, i, {"model.init_args.width": w})
               for i, w in enumerate((8, 32))]
    assert [c.model.init_args for c in configs] == [{"width": 8, "dropout": 0.1}, {"width": 32, "dropout": 0.1}]
    assert all(c.model.class_path == f"{tmp_path}/nets.py:SmallBNNet" for c in configs)  # made absolute
    assert build_model(configs[1].model, (4,), 3).body[1].out_features == 32


def test_getitems_may_return_the_batch_as_two_stacked_tensors():
    from dist_train.data.custom import collate

    x, y = torch.arange(12.0).reshape(4, 3), torch.tensor([0, 1, 0, 2])
    got = collate((x, y))  # what a __getitems__ returning the batch itself gives
    assert got[0] is x and got[1] is y
    stacked = collate([(x[i], y[i]) for i in range(4)])  # a list of items
    assert torch.equal(stacked[0], x) and torch.equal(stacked[1], y)
    with pytest.raises(ConfigError, match="inputs of different shapes"):
        collate([(torch.zeros(3), 0), (torch.zeros(4), 1)])
    with pytest.raises(ConfigError, match=r"the val split's item 20 and the val split's item 22 have targets of "
                                          r"different shapes \(\(\) and \(2,\)\)"):
        collate([(torch.zeros(3), 0), (torch.zeros(3), 1), (torch.zeros(3), [1, 2])], [20, 21, 22], "val")


@pytest.mark.parametrize("readers", [0, 2])
def test_an_item_that_fails_in_training_is_named_with_its_split_index_and_place(readers):
    """Met by the loader (its reader processes too), not at start: the error
    travels back as data and is raised in the rank with its message whole."""
    from dist_train.errors import DistTrainError
    from tests.helpers import build_trainer

    cfg = load_config(None, [*CUSTOM, f"data.class_path={DATA}:failing_item", "data.normalize=none",
                             f"data.loader_workers={readers}", "train.global_batch_size=4", "wandb.mode=disabled"])
    trainer = build_trainer(cfg, DistEnv())
    with pytest.raises(DistTrainError) as info:
        trainer.fit()
    assert "reading the train split's item 5 failed: FileNotFoundError: sample-5.png (at tests/user_project/" \
           "data.py:" in str(info.value) and "in __getitem__)" in str(info.value)
