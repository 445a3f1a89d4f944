"""`data.normalize: auto` (the default): per feature for tabular inputs, per
channel for images, decided from the data and said in the `start` record and
the model bundle; checkpoints saved with a named mode go on under `auto` when
it gives the same mode and are refused, leaving the run directory as it was,
when it gives another (issue 25)."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dist_train.config import load_config
from dist_train.data.prepare import PrepareOptions, prepare
from dist_train.env import DistEnv
from dist_train.errors import EXIT_RESUME, DistTrainError
from dist_train.run import run
from tests.conftest import REPO
from tests.helpers import assert_same_final_state, final_state, metrics, sigterm_at

QUIET = ["wandb.mode=disabled", "dist.device=cpu", "run.progress=false"]


@pytest.fixture(scope="module")
def scaled_columns(tmp_path_factory):
    """A CSV whose three feature columns have scales of their own (means 50,
    0.01 and -300, as in the issue) and a target that depends on all three,
    prepared with `dist-train prepare csv`."""
    root = tmp_path_factory.mktemp("csv")
    rng = np.random.default_rng(0)
    z = rng.normal(size=(600, 3))
    x = np.stack([50 + 10 * z[:, 0], 0.01 + 0.002 * z[:, 1], -300 + 40 * z[:, 2]], axis=1)
    y = 2 * z[:, 0] - 3 * z[:, 1] + z[:, 2] + 0.1 * rng.normal(size=600)
    lines = ["speed,ratio,depth,target"] + [f"{a:.6g},{b:.6g},{c:.6g},{t:.6g}" for (a, b, c), t in zip(x, y)]
    (root / "table.csv").write_text("\n".join(lines) + "\n")
    prepare("csv", PrepareOptions(out=root / "shards", csv=root / "table.csv", target="target"))
    return root / "shards"


def quickstart(run_dir, *overrides):
    """The quick start's settings (configs/quickstart.yaml: its normalize is the default, auto)."""
    cfg = load_config(f"{REPO}/configs/quickstart.yaml", [*QUIET, f"run.dir={run_dir}", *overrides])
    assert run(cfg, DistEnv()) == 0
    records = metrics(run_dir)
    start = next(r for r in records if r["event"] == "start")
    test = {k: v for k, v in next(r for r in records if r["event"] == "test").items() if k != "time"}
    return start["normalize"], test, final_state(run_dir)["model"]


def test_a_table_with_columns_of_their_own_scales_trains_well_with_the_defaults(scaled_columns, tmp_path):
    table = ["data.source=shards", f"data.path={scaled_columns}", "train.loss=mse"]
    mode, test, weights = quickstart(tmp_path / "auto", *table)
    assert mode == "per_feature"
    assert test["test_r2"] > 0.95, test
    explicit, explicit_test, explicit_weights = quickstart(tmp_path / "explicit", *table,
                                                           "data.normalize=per_feature")
    assert explicit == "per_feature" and explicit_test == test  # the same run, bit for bit
    assert all(torch.equal(weights[k], explicit_weights[k]) for k in weights)
    # what the default did before: one mean and std over all columns loses the small one
    old, old_test, _ = quickstart(tmp_path / "per_channel", *table, "data.normalize=per_channel")
    assert old == "per_channel" and old_test["test_r2"] < 0.5, old_test
    # the bundle carries the mode and statistics the run used
    bundle = torch.load(next((tmp_path / "auto" / "checkpoints").glob("step-*")) / "predictor.pt", weights_only=True)
    assert bundle["inputs"]["normalize"] == "per_feature" and bundle["inputs"]["mean"].shape == (3,)


def test_images_still_get_per_channel(tmp_path):
    short = ["train.epochs=2"]
    mode, test, weights = quickstart(tmp_path / "auto", *short)
    assert mode == "per_channel"
    explicit, explicit_test, explicit_weights = quickstart(tmp_path / "explicit", *short, "data.normalize=per_channel")
    assert explicit == "per_channel" and explicit_test == test
    assert all(torch.equal(weights[k], explicit_weights[k]) for k in weights)


DATA = {"digits": ["data.source=digits"], "diabetes": ["data.source=diabetes", "train.loss=mse"],
        "custom": ["data.source=custom", f"data.class_path={REPO}/tests/user_project/data.py:make_splits",
                   "data.loader_workers=0"]}
JOB = ["model.hidden_sizes=[16]", "model.dropout=0.2", "train.global_batch_size=64", "train.epochs=2",
       "train.stop_check_every_steps=1", "checkpoint.every_steps=4", *QUIET]


def job(run_dir, source, *overrides):
    return load_config(None, [*DATA[source], *JOB, f"run.dir={run_dir}", *overrides])


@pytest.mark.parametrize("source, saved_with", [("digits", "per_channel"), ("diabetes", "per_feature"),
                                                ("custom", "per_feature")])
def test_a_checkpoint_of_a_named_mode_goes_on_under_auto_when_it_gives_the_same(tmp_path, source, saved_with):
    """Stopped mid-epoch under the named mode (as every checkpoint before auto
    was), resumed under auto: not a change, and bit for bit the whole run."""
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert run(job(whole, source), DistEnv()) == 0
    assert run(job(broken, source, f"data.normalize={saved_with}"), DistEnv(), sigterm_at(5)) == EXIT_RESUME
    assert run(job(broken, source), DistEnv()) == 0
    resumed = final_state(broken)
    assert_same_final_state(final_state(whole), resumed, resumed["step"])
    assert not [r for r in metrics(broken) if r["event"] == "resume" and r.get("changed")]


def files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("source, saved_with, gives", [("diabetes", "per_channel", "per_feature"),
                                                       ("custom", "per_channel", "per_feature"),
                                                       ("digits", "per_feature", "per_channel")])
def test_a_checkpoint_of_another_mode_than_auto_gives_is_refused_and_nothing_changes(tmp_path, source, saved_with,
                                                                                    gives):
    run_dir = tmp_path / "run"
    assert run(job(run_dir, source, f"data.normalize={saved_with}", "train.epochs=1"), DistEnv()) == 0
    before = files(run_dir)
    with pytest.raises(DistTrainError) as refused:
        run(job(run_dir, source, "train.epochs=2"), DistEnv())  # more epochs, under auto
    assert (f"data.normalize gives '{gives}' for these inputs" in str(refused.value)
            and f"the checkpoint's run normalized them '{saved_with}'" in str(refused.value)
            and f"Set data.normalize={saved_with} to go on with it" in str(refused.value)), refused.value
    assert files(run_dir) == before
    # as the hint says
    assert run(job(run_dir, source, "train.epochs=2", f"data.normalize={saved_with}"), DistEnv()) == 0
    assert json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["event"] == "checkpoint"
