"""`dist-train prepare csv` as a command: a CSV prepared, and a bad cell named
in one line."""

import subprocess
import sys

from dist_train.data.shards import load_manifest
from tests.conftest import REPO
from tests.helpers import write_csv


def test_command_line_prepares_a_csv_and_names_a_bad_cell_in_one_line(tmp_path):
    rows = [["a", "b", "price"]] + [[i, i % 7, i * 1.5] for i in range(30)]
    good = write_csv(tmp_path / "good.csv", rows)
    rows[3][0] = "twelve"  # line 4 of the file
    bad = write_csv(tmp_path / "bad.csv", rows)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "launcher", "prepare", "csv", *args, "--shards", "2"],
                              capture_output=True, text=True, timeout=120, cwd=REPO)

    ok = cli("--csv", str(good), "--target", "price", "--features", "b,a", "--out", str(tmp_path / "ok"))
    assert ok.returncode == 0, ok.stderr
    assert "train 22 samples in 2 shards" in ok.stdout and "regression, targets ()" in ok.stdout
    assert load_manifest(tmp_path / "ok").input_shape == (2,)
    proc = cli("--csv", str(bad), "--target", "price", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"dist-train: error: {bad} line 4, column 'a': 'twelve' is not a (finite) "
                                        "number; fix the value, or leave the column out of --features"]
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_command_line_names_every_bad_image_in_one_line(tmp_path):
    from PIL import Image

    for i, cls in enumerate(["cat", "dog"]):
        for j in range(6):
            (tmp_path / "src" / cls).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (9, 7), (40 * i, 20 * j, 90)).save(tmp_path / "src" / cls / f"{j}.png")
    first, second = tmp_path / "src" / "cat" / "3.png", tmp_path / "src" / "dog" / "x.jpg"
    first.write_bytes(first.read_bytes()[:30])  # truncated
    second.write_text("not a JPEG")
    proc = subprocess.run([sys.executable, "-m", "launcher", "prepare", "imagefolder", "--source-dir",
                           str(tmp_path / "src"), "--image-size", "8", "--shards", "2", "--eval-shards", "1",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2 and proc.stdout == ""
    [line] = proc.stderr.splitlines()
    assert line.startswith(f"dist-train: error: 2 problems in the image tree {tmp_path / 'src'}: ")
    assert f"cannot decode image {first} (" in line and f"cannot decode image {second} (" in line
    assert line.endswith("To fix: replace or delete the images that do not decode; then run the command again")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no --out, nothing aside
