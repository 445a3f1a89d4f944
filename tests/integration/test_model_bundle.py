"""What training produces can be used: for every kind of data source a run
trains, exports, and a fresh interpreter that never imports dist_train loads
the torch-only .pt2 and reproduces the run's test metrics from raw inputs
(the same predictions; regression within 1e-6); `dist_train.load_model` and
`FitResult.predict` give the same predictions."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dist_train
from dist_train.config import DataConfig, load_config
from dist_train.data.prepare import PrepareOptions, prepare
from dist_train.data.shards import iter_blocks, load_manifest
from dist_train.data.sources import raw_split
from dist_train.env import DistEnv
from dist_train.run import run_job
from tests.conftest import REPO
from tests.helpers import metrics

FASHION = Path("/usr/share/datasets/fashion-mnist")
SMALL = ["train.epochs=2", "dist.device=cpu", "wandb.mode=disabled", "run.progress=false", "data.loader_workers=0",
         "train.global_batch_size=32", "optim.lr=0.01"]


def shard_test_split(path):
    manifest = load_manifest(path)
    blocks = [b for info in manifest.splits["test"] for b in iter_blocks(manifest.root / info.file)]
    return np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks])


def prepared(tmp_path, name, **options):
    out = tmp_path / f"prepared-{name}"
    prepare(name, PrepareOptions(out=out, train_shards=2, **options))
    return out


def case_digits(tmp_path):
    return ["data.source=digits", "model.hidden_sizes=[32]"], raw_split(DataConfig(), "test")


def case_csv_regression(tmp_path):
    """Columns with scales of their own (means 50, 0.01, -300), a real-valued target."""
    rng = np.random.default_rng(0)
    n = 400
    cols = {"rooms": rng.normal(50, 10, n), "tax": rng.normal(0.01, 0.002, n), "depth": rng.normal(-300, 40, n)}
    price = 2 * (cols["rooms"] - 50) / 10 - 3 * (cols["tax"] - 0.01) / 0.002 + (cols["depth"] + 300) / 40
    rows = zip(cols["depth"], price + rng.normal(0, 0.1, n), cols["rooms"], cols["tax"])
    lines = ["depth,price,rooms,tax"] + [",".join(repr(float(v)) for v in row) for row in rows]
    (tmp_path / "houses.csv").write_text("\n".join(lines) + "\n")
    path = prepared(tmp_path, "csv", csv=tmp_path / "houses.csv", target="price")
    return ([f"data.source=shards", f"data.path={path}", "data.normalize=per_feature", "train.loss=mse",
             "train.epochs=4"], shard_test_split(path))


def case_arrays(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 5)).astype(np.float32) * [1, 10, 100, 0.1, 1]
    np.savez(tmp_path / "d.npz", x=x, y=(x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0))
    path = prepared(tmp_path, "arrays", inputs=tmp_path / "d.npz")
    return [f"data.source=shards", f"data.path={path}", "data.normalize=per_feature"], shard_test_split(path)


def case_imagefolder(tmp_path):
    made = subprocess.run([sys.executable, "examples/image_folder/make_shapes.py", str(tmp_path / "shapes"), "30"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    path = prepared(tmp_path, "imagefolder", source_dir=tmp_path / "shapes", image_size=(12, 12), color="grey")
    return ([f"data.source=shards", f"data.path={path}", "model.name=cnn", "model.channels=[4]"],
            shard_test_split(path))


def case_fashion_mnist(tmp_path):
    if not FASHION.is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (.ci/run installs it)")
    path = prepared(tmp_path, "fashion-mnist")
    return ([f"data.source=shards", f"data.path={path}", "data.cache=host", "train.max_steps=15",
             "train.global_batch_size=256", "model.hidden_sizes=[32]"], shard_test_split(path))


def case_custom(tmp_path):
    from tests.user_project.data import make_splits

    test = make_splits(regression=True)[2]
    return ([f"data.source=custom", f"data.class_path={REPO}/tests/user_project/data.py:make_splits",
             "data.init_args={regression: true}", "train.loss=mse", "data.normalize=per_feature",
             f"model.class_path={REPO}/tests/user_project/nets.py:regressor"],
            (test.inputs.numpy(), test.targets.numpy()))


CASES = {"digits": case_digits, "csv": case_csv_regression, "arrays": case_arrays, "imagefolder": case_imagefolder,
         "fashion_mnist": case_fashion_mnist, "custom": case_custom}


def torch_only(jobs):
    """Runs tests/scripts/torch_only.py in a fresh interpreter on (pt2, x, y) jobs; its JSON lines and outputs."""
    argv = []
    for pt2, x, y in jobs:
        np.save(f"{pt2}.x.npy", x)
        np.save(f"{pt2}.y.npy", y)
        argv += [str(pt2), f"{pt2}.x.npy", f"{pt2}.y.npy", f"{pt2}.out.npy"]
    proc = subprocess.run([sys.executable, "-I", f"{REPO}/tests/scripts/torch_only.py", *argv], capture_output=True,
                          text=True, timeout=300, cwd="/", env={k: v for k, v in os.environ.items()
                                                               if not k.startswith("PYTHON")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    return [(line, np.load(f"{pt2}.out.npy")) for line, (pt2, _, _) in zip(lines, jobs)]


def assert_reproduces(run_test, found, task):
    if task == "classification":
        assert found["accuracy"] == run_test["test_accuracy"]
    else:
        for name in ("mse", "mae", "r2"):
            assert abs(found[name] - run_test[f"test_{name}"]) <= 1e-6, (name, found[name], run_test[f"test_{name}"])


def test_every_source_exports_a_model_torch_alone_reproduces_from_raw_inputs(tmp_path):
    jobs, checks = [], []
    for name, case in CASES.items():
        try:
            overrides, (x, y) = case(tmp_path)
        except pytest.skip.Exception:
            continue
        run_dir = tmp_path / "runs" / name
        outcome = run_job(load_config(None, [*SMALL, *overrides, f"run.dir={run_dir}"]), DistEnv())
        assert outcome.exit_code == 0
        test = next(r for r in metrics(run_dir) if r["event"] == "test")
        done = dist_train.export(run_dir, tmp_path / f"{name}.pt")
        assert done.program is not None, done.program_error
        loaded = dist_train.load_model(done.bundle)
        assert loaded.info["checkpoint"]["metrics"]["test_loss"] == test["test_loss"]
        jobs.append((done.program, x, y))
        checks.append((name, test, loaded, outcome.result, x))
    assert len(checks) >= 5
    for (found, outputs), (name, test, loaded, result, x) in zip(torch_only(jobs), checks):
        assert_reproduces(test, found, loaded.task)
        through_bundle = loaded.predict(x).numpy()
        through_result = result.predict(x).cpu().numpy()
        if loaded.task == "classification":
            assert np.array_equal(outputs.argmax(axis=1), through_bundle), name
            assert found["class_names"] == (list(loaded.class_names) if loaded.class_names else None)
        else:
            assert np.abs(outputs.reshape(through_bundle.shape) - through_bundle).max() <= 1e-6, name
        assert np.array_equal(through_bundle, through_result), name


def test_the_python_api_exports_a_model_that_takes_raw_inputs(tmp_path):
    """dist_train.fit with a model function and datasets: FitResult.predict on
    raw inputs, the bundle rebuilt from the function's file, and the .pt2."""
    from tests.user_project.data import make_splits
    from tests.user_project.nets import SmallBNNet

    train, val, test = make_splits()
    config = {"data": {"normalize": "per_feature", "loader_workers": 0}, "optim": {"lr": 0.01},
              "train": {"epochs": 3, "global_batch_size": 32}, "dist": {"device": "cpu"},
              "wandb": {"mode": "disabled"}, "run": {"dir": str(tmp_path / "api"), "progress": False}}
    torch.manual_seed(0)
    result = dist_train.fit(config, model=SmallBNNet, data=(train, val, test))
    assert result.model.training is False
    predicted = result.predict(test.inputs).numpy()
    assert (predicted == test.targets.numpy()).mean() == result.test["accuracy"]
    assert int(result.predict(test.inputs[0])) == predicted[0]  # one sample
    done = dist_train.export(tmp_path / "api", tmp_path / "api.pt")
    assert np.array_equal(dist_train.load_model(done.bundle).predict(test.inputs).numpy(), predicted)
    [(found, outputs)] = torch_only([(done.program, test.inputs.numpy(), test.targets.numpy())])
    assert found["accuracy"] == result.test["accuracy"]
    assert np.array_equal(outputs.argmax(axis=1), predicted)
    # evaluating needs the data: the run's splits came from the script
    with pytest.raises(dist_train.DistTrainError, match="given its data in Python"):
        dist_train.evaluate(done.bundle)
    found = dist_train.evaluate(done.bundle, test)
    assert found["accuracy"] == result.test["accuracy"] and abs(found["loss"] - result.test["loss"]) <= 1e-9


def train_with_plain_batch_norm(env, run_dir):
    cfg = load_config(None, [*SMALL, "data.source=digits", "model.hidden_sizes=[32,32]", "model.batch_norm=true",
                             "model.sync_batchnorm=false", "train.epochs=3", f"run.dir={run_dir}"])
    return run_job(cfg, env).exit_code


def test_plain_batch_norm_under_ddp_reports_the_saved_models_metrics(tmp_path):
    """Each rank's plain batch norm updates its own running statistics; the
    checkpoint holds rank 0's. Every rank evaluates with rank 0's, so the
    reported validation and test metrics are the saved model's. The tolerance
    is that of float32 outputs computed in other batches (each rank its share
    of the split, against the whole split in one process): 1e-6 relative,
    where evaluating with each rank's own statistics was 1e-4 away."""
    from tests.multiproc import run_workers

    run_dir = tmp_path / "bn"
    assert run_workers(train_with_plain_batch_norm, 2, str(run_dir), timeout_s=180) == [0, 0]
    records = metrics(run_dir)
    last_epoch = [r for r in records if r["event"] == "epoch"][-1]
    test = next(r for r in records if r["event"] == "test")
    val = dist_train.evaluate(run_dir, split="val")
    assert abs(val["loss"] - last_epoch["val_loss"]) <= 1e-6 * last_epoch["val_loss"]
    assert val["accuracy"] == last_epoch["val_accuracy"]
    found = dist_train.evaluate(run_dir)
    assert abs(found["loss"] - test["test_loss"]) <= 1e-6 * test["test_loss"]
    assert found["accuracy"] == test["test_accuracy"]
