"""`dist-train prepare digits | idx` as a command."""

from dist_train.data.shards import load_manifest
from tests.conftest import REPO


def test_prepare_command_line(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "launcher", "prepare", "digits", "--out", str(tmp_path / "d"),
                           "--shards", "4"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "train 1257 samples in 4 shards" in proc.stdout
    assert len(load_manifest(tmp_path / "d").splits["train"]) == 4
    bad = subprocess.run([sys.executable, "-m", "launcher", "prepare", "idx", "--out", str(tmp_path / "e"),
                          "--source-dir", str(tmp_path / "none")], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert bad.returncode == 2 and "source directory" in bad.stderr and "does not exist" in bad.stderr
