"""One worker entry: `dist-train launch` loads the config, checks the job and
plans the start once, and hands that to its workers, which read no config
file and plan nothing again; `dist_train.fit` sets its process up as `dist-train
run` does (SLURM's ranks, LOCAL_RANK for DeepSpeed)."""

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

# Loaded first by every Python process of the job (launcher and workers, the
# PYTHONPATH carries it to them): counts the calls, per process, to a file.
COUNTING = """
import json, os, sys
LOG = os.environ["COUNT_LOG"]

def counted(module, name):
    import importlib
    mod = importlib.import_module(module)
    real = getattr(mod, name)
    def wrapper(*args, **kwargs):
        with open(LOG, "a") as fh:
            fh.write(json.dumps([os.getpid(), os.environ.get("RANK", "launcher"), name]) + "\\n")
        return real(*args, **kwargs)
    setattr(mod, name, wrapper)

for module, name in [("dist_train.config", "load_config"), ("dist_train.start", "plan_start"),
                     ("dist_train.preflight", "check_job")]:
    counted(module, name)
"""


def counted_launch(tmp_path, *args):
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(COUNTING)
    log = tmp_path / "calls.jsonl"
    log.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": f"{shim}:{REPO}", "COUNT_LOG": str(log), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "launcher", "launch", "--nproc-per-node", "2", *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    return Counter((who, name) for _, who, name in calls), proc


@pytest.mark.parametrize("resumed", [False, True])
def test_the_config_is_read_once_and_the_start_planned_once_per_job(tmp_path, resumed):
    run_dir = tmp_path / "run"
    common = ["configs/cpu_test.yaml", f"run.dir={run_dir}", "wandb.mode=disabled", "dist.device=cpu"]
    if resumed:
        counted_launch(tmp_path, *common, "train.epochs=1")
    counts, proc = counted_launch(tmp_path, *common, "train.epochs=2")
    assert counts == Counter({("launcher", "load_config"): 1, ("launcher", "check_job"): 1,
                              ("launcher", "plan_start"): 1})  # the workers (RANK 0, 1) did none of it
    assert ("dist-train: resuming from" in proc.stdout) == resumed
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [0, 1]


def test_the_python_api_sets_deepspeed_up_in_a_lone_process(tmp_path):
    """DeepSpeed reads LOCAL_RANK from the environment; a plain `python script.py`
    has none, and dist_train.fit sets it as `dist-train run` does."""
    pytest.importorskip("deepspeed")
    code = ("import dist_train; r = dist_train.fit('configs/cpu_test.yaml', 'strategy.name=deepspeed', "
            "'strategy.zero_stage=1', 'train.max_steps=3', 'dist.device=cpu', 'wandb.mode=disabled', "
            f"'run.dir={tmp_path}'); print('steps', r.steps)")
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**env, "PYTHONPATH": REPO})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "steps 3" in proc.stdout
