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
