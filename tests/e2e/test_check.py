"""`dist-train check` as a subprocess: a learning rate of 100 fails the
overfit check with the learning-rate hint."""

import os
import subprocess
import sys

from tests.conftest import REPO
from tests.helpers import check_line


def test_learning_rate_100_fails_the_overfit_check_with_the_learning_rate_hint():
    proc = subprocess.run([sys.executable, "-m", "launcher", "check", "configs/quickstart.yaml", "optim.lr=100"],
                          capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert check_line(lines, "initial loss").startswith("PASS")  # the weights start fine; the steps are too large
    fail = lines.index(check_line(lines, "overfit 50 examples"))
    assert lines[fail].startswith("FAIL")
    assert lines[fail + 1].startswith("      hint: learning rate too large") and "optim.lr=10" in lines[fail + 1]
    assert lines[-1] == "2 passed, 1 failed"
