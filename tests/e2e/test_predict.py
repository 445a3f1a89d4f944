"""`dist-train predict` and `dist-train evaluate` as commands: on 2 workers the
predictions file is byte for byte the one process's, every sample once and
in input order with a ragged last batch, and the metrics are the same; every
bad input is one line, exit status 2, and nothing written."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dist_train
from dist_train.config import load_config
from dist_train.data.prepare import PrepareOptions, prepare
from dist_train.env import DistEnv
from dist_train.run import run
from tests.conftest import REPO

pytestmark = pytest.mark.slow

TRAIN = ["train.epochs=3", "dist.device=cpu", "wandb.mode=disabled", "run.progress=false", "data.loader_workers=0",
         "train.global_batch_size=32", "optim.lr=0.01"]


def cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "launcher", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=240)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """An image model (an MLP on a folder of 28 x 28 shapes), a CSV model (text class
    labels) and a model of the user's own class_path file, each exported."""
    root = tmp_path_factory.mktemp("models")
    made = subprocess.run([sys.executable, "examples/image_folder/make_shapes.py", str(root / "shapes"), "20"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    # 28 x 28 = 784 inputs: a matrix product MKL splits differently with 1 and 2 threads
    prepare("imagefolder", PrepareOptions(out=root / "images", source_dir=root / "shapes", image_size=(28, 28),
                                          color="grey", train_shards=2))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 3)) * [1, 50, 0.1]
    kinds = np.array(["cheap", "fair", "dear"])[(x[:, 0] > 0).astype(int) + (x[:, 1] > 20)]
    lines = ["size,label,age,rooms"] + [f"{a:.5f},{k},{b:.5f},{c:.5f}" for (a, b, c), k in zip(x, kinds)]
    (root / "houses.csv").write_text("\n".join(lines) + "\n")
    prepare("csv", PrepareOptions(out=root / "table", csv=root / "houses.csv", target="label", train_shards=2))
    shutil.copy(f"{REPO}/tests/user_project/nets.py", root / "nets.py")
    found = {"root": root}
    for name, extra in (("images", ["data.source=shards", f"data.path={root / 'images'}", "model.hidden_sizes=[64]"]),
                        ("table", ["data.source=shards", f"data.path={root / 'table'}", "data.normalize=per_feature"]),
                        ("user", ["data.source=shards", f"data.path={root / 'table'}", "data.normalize=per_feature",
                                  f"model.class_path={root / 'nets.py'}:SmallBNNet"])):
        assert run(load_config(None, [*TRAIN, *extra, f"run.dir={root / 'runs' / name}"]), DistEnv()) == 0
        found[name] = dist_train.export(root / "runs" / name, root / f"{name}.pt", torch_only=False).bundle
    return found


def predict(model, inputs, out, *extra, workers=1):
    launch = ["--nproc-per-node", workers] if workers > 1 else []
    return cli("predict", model, *inputs, "--out", out, *launch, *extra)


def test_predictions_on_two_workers_are_the_one_process_file_byte_for_byte(models, tmp_path):
    images = tmp_path / "new"
    files = sorted((models["root"] / "shapes").rglob("*.png"))[:53]  # 53 = 6 batches of 8 and a ragged one of 5
    for i, file in enumerate(files):
        (images / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        shutil.copy(file, images / f"d{i % 3}" / f"{i:03d}.png")
    for model, inputs in ((models["images"], [images]), (models["table"], [models["root"] / "houses.csv"])):
        outs = []
        for workers in (1, 2):
            out = tmp_path / f"{Path(model).stem}-{workers}.csv"
            proc = predict(model, inputs, out, "--batch-size", 8, "--top-k", 2, workers=workers)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert (f"with {workers} workers" in proc.stdout) == (workers > 1) and "samples/s" in proc.stdout
            outs.append(out.read_bytes())
        assert outs[0] == outs[1]
    rows = (tmp_path / "images-2.csv").read_text().splitlines()
    assert rows[0] == "row,sample,class,class_name,probability,class_2,class_name_2,probability_2"
    assert [r.split(",")[1] for r in rows[1:]] == sorted(str(p) for p in images.rglob("*.png"))  # each once, in order
    assert {r.split(",")[3] for r in rows[1:]} <= {"circle", "square", "triangle"}
    table = (tmp_path / "table-1.csv").read_text().splitlines()
    assert len(table) == 241 and table[1].startswith("0,line 2,")


def test_evaluate_on_two_workers_gives_the_one_process_metrics(models, tmp_path):
    found = []
    for workers in (1, 2):
        launch = ["--nproc-per-node", workers] if workers > 1 else []
        proc = cli("evaluate", models["table"], "--out", tmp_path / f"ev{workers}", "--batch-size", 16, *launch)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        found.append(json.loads((tmp_path / f"ev{workers}" / "metrics.json").read_text())["metrics"])
        assert (tmp_path / f"ev{workers}" / "confusion_matrix.png").stat().st_size > 1000
    one, two = found
    assert one["confusion_matrix"] == two["confusion_matrix"] and one["accuracy"] == two["accuracy"]
    for key in ("loss", "log_loss", "macro_f1"):
        assert abs(one[key] - two[key]) <= 1e-12 * max(1.0, abs(one[key])), key
    run_test = next(json.loads(line) for line in (models["root"] / "runs" / "table" / "metrics.jsonl").read_text()
                    .splitlines() if '"test"' in line)
    assert one["accuracy"] == run_test["test_accuracy"] and abs(one["loss"] - run_test["test_loss"]) <= 1e-6
    assert one["class_names"] == ["cheap", "dear", "fair"] and one["count"] == sum(one["support"].values())
    # a new data set: a folder of class folders of images, labelled by the model's class names
    proc = cli("evaluate", models["images"], models["root"] / "shapes", "--top-k", 2)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"({len(list((models['root'] / 'shapes').rglob('*.png')))} samples)" in proc.stdout
    assert "top2_accuracy" in proc.stdout and "triangle" in proc.stdout


def bad_input(models, tmp_path, kind):
    """(model, inputs, what the one line must say) for each kind of bad input."""
    root = models["root"]
    header = "size,label,age,rooms"
    if kind == "missing column":
        (tmp_path / "in.csv").write_text("size,age\n1,2\n")
        return models["table"], [tmp_path / "in.csv"], "has no column 'rooms'"
    if kind == "unknown column":
        (tmp_path / "in.csv").write_text(f"{header},colour\n1,fair,2,3,red\n")
        return models["table"], [tmp_path / "in.csv"], "unknown column 'colour'"
    if kind == "text cell":
        (tmp_path / "in.csv").write_text(f"{header}\n1,fair,2,3\n1,fair,two,3\n")
        return models["table"], [tmp_path / "in.csv"], "line 3, column 'age': 'two'"
    if kind == "broken image":
        (tmp_path / "imgs").mkdir()
        shutil.copy(sorted((root / "shapes").rglob("*.png"))[0], tmp_path / "imgs" / "a.png")
        (tmp_path / "imgs" / "b.png").write_bytes(b"not a png")
        return models["images"], [tmp_path / "imgs"], "cannot decode image"
    if kind == "wrong shape":
        np.save(tmp_path / "x.npy", np.zeros((4, 5), dtype=np.float32))
        return models["table"], [tmp_path / "x.npy"], "inputs of shape (4, 5) do not fit the model"
    if kind == "no checkpoint":
        (tmp_path / "empty-run").mkdir()
        (tmp_path / "in.csv").write_text(f"{header}\n1,fair,2,3\n")
        return tmp_path / "empty-run", [tmp_path / "in.csv"], "holds no valid checkpoint"
    if kind == "newer format":
        state = torch.load(models["table"], weights_only=True)
        state["format"] = "dist-train-bundle/2"
        torch.save(state, tmp_path / "new.pt")
        (tmp_path / "in.csv").write_text(f"{header}\n1,fair,2,3\n")
        return tmp_path / "new.pt", [tmp_path / "in.csv"], "written by a newer dist-train"
    if kind == "changed code":  # the bundle and its model file, moved together; then the file is edited
        shutil.copy(models["user"], tmp_path / "user.pt")
        (tmp_path / "nets.py").write_text((root / "nets.py").read_text() + "\n# edited\n")
        state = torch.load(models["user"], weights_only=True)
        state["predictor"]["recipe"]["files"] = {str(tmp_path / "gone" / "nets.py"): next(
            iter(state["predictor"]["recipe"]["files"].values()))}
        state["predictor"]["recipe"]["model"]["class_path"] = f"{tmp_path / 'gone' / 'nets.py'}:SmallBNNet"
        torch.save(state, tmp_path / "user.pt")
        (tmp_path / "in.csv").write_text(f"{header}\n1,fair,2,3\n")
        return tmp_path / "user.pt", [tmp_path / "in.csv"], "changed since it was trained"
    raise AssertionError(kind)


KINDS = ["missing column", "unknown column", "text cell", "broken image", "wrong shape", "no checkpoint",
         "newer format", "changed code"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_bad_input_is_one_line_exit_2_and_nothing_written(models, tmp_path, kind):
    model, inputs, says = bad_input(models, tmp_path, kind)
    out = tmp_path / "predictions.csv"
    proc = predict(model, inputs, out)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == "" and proc.stderr.count("\n") == 1 and says in proc.stderr, proc.stderr
    assert proc.stderr.startswith("dist-train: error: ")
    assert not out.exists()


def test_a_bad_image_met_by_a_worker_is_one_line_exit_2_under_two_workers(models, tmp_path):
    model, inputs, says = bad_input(models, tmp_path, "broken image")
    proc = predict(model, inputs, tmp_path / "p.csv", workers=2)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and says in lines[0], lines
    assert not (tmp_path / "p.csv").exists()
