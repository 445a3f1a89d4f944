"""The deepspeed strategy through the command line: consolidated weights that
`dist-train export` writes for plain torch, a DeepSpeed key conflict refused
by `launch` before any worker, the message where DeepSpeed is not installed, a
worker killed under torchrun, and a one-process run that compiles nothing."""

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import REPO
from tests.helpers import events, stop_and_resume
from tests.multiproc import run_workers, worker_pids


deepspeed = pytest.importorskip("deepspeed", reason="DeepSpeed is an optional extra: pip install -e '.[deepspeed]'")


def test_consolidated_weights_load_with_plain_torch(tmp_path):
    """ZeRO-3 shards the parameters; model.pt (and `dist-train export
    --state-dict`) still holds the whole model, loadable into a plain torch
    module; the bundle loads it behind its preprocessing."""
    (whole, _), _ = run_workers(stop_and_resume, 2, str(tmp_path), 3, timeout_s=300)
    out = tmp_path / "weights.pt"
    proc = subprocess.run([sys.executable, "-m", "launcher", "export", whole, "--out", str(out), "--state-dict"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    code = f"""
import torch
from torch import nn
state = torch.load({str(out)!r}, weights_only=True)
model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 4))
model.load_state_dict({{k.removeprefix('net.'): v for k, v in state.items()}})
print(sum(p.numel() for p in model.parameters()))
"""
    check = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd="/")
    assert check.returncode == 0, check.stderr
    assert int(check.stdout.strip()) == 12 * 16 + 16 + 16 * 4 + 4
    import dist_train

    bundle = dist_train.export(whole, tmp_path / "model.pt")
    assert dist_train.load_model(bundle.bundle).predict(torch.zeros(3, 12)).shape == (3,)


# ------------------------------------------------------------ configuration

def test_a_deepspeed_key_conflict_given_to_launch_exits_2_before_any_worker_starts(tmp_path):
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "launcher", "launch", "--nproc-per-node", "2", "configs/cpu_test.yaml",
                           "strategy.name=deepspeed", "strategy.deepspeed_config={train_batch_size: 64}",
                           f"run.dir={tmp_path / 'run'}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert time.monotonic() - start < 10
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("dist-train: error: config key 'strategy.deepspeed_config.train_batch_size': is "
                                   "derived from our config (hint: set train.global_batch_size instead)")
    assert proc.stdout == "" and not (tmp_path / "run").exists()  # no worker started, nothing written


def test_without_deepspeed_installed_the_message_names_the_install_command(tmp_path):
    """A real process where `import deepspeed` fails (the module is blocked in
    sys.modules, which is how Python reports a missing package)."""
    code = ("import sys; sys.modules['deepspeed'] = None\n"
            "from launcher.cli import main\n"
            f"sys.exit(main(['run', 'configs/cpu_test.yaml', 'strategy.name=deepspeed', 'run.dir={tmp_path}']))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "pip install 'dist-train[deepspeed]'" in proc.stderr


# ------------------------------------------------------------ the whole job under torchrun

def launch_deepspeed(run_dir, restarts=0):
    from tests.helpers import launch

    return launch(run_dir, "strategy.name=deepspeed", "strategy.zero_stage=2", "train.epochs=5",
                  "early_stopping.enabled=true", "early_stopping.patience=2", "schedule.name=plateau",
                  "schedule.patience=0", "wandb.mode=offline", restarts=restarts)


@pytest.mark.slow
def test_worker_killed_under_deepspeed_is_restarted_and_ends_as_uninterrupted(tmp_path):
    """torchrun with --max-restarts 1, kill -9 of a worker mid-run: the restarted
    workers resume from DeepSpeed's checkpoint and end with the uninterrupted
    run's weights; the plateau LR schedule, early stopping and the single W&B
    run carry through the restart."""
    import signal

    from tests.multiproc import wait_for_step
    from tests.helpers import final_weights, finish
    from tests.helpers import leet, offline_runs

    whole = tmp_path / "whole"
    code, out = finish(launch_deepspeed(whole))
    assert code == 0, out
    broken = tmp_path / "broken"
    proc = launch_deepspeed(broken, restarts=1)
    wait_for_step(broken, 22, proc)
    workers = worker_pids(proc.pid)  # this launcher's workers only
    assert workers, "no worker processes found"
    os.kill(workers[-1], signal.SIGKILL)
    code, out = finish(proc)
    assert code == 0, out
    assert "resuming from" in out
    a, b = final_weights(whole), final_weights(broken)
    for key, value in a.items():
        assert torch.equal(value, b[key]), key
    assert events(whole) == events(broken)
    runs = offline_runs(broken)
    assert len(runs) == 2 and len({json.loads(leet(r, "--summary"))["run_id"] for r in runs}) == 1


def test_one_process_deepspeed_run_compiles_no_op(tmp_path):
    """Our torch optimizer, and DeepSpeed's CPU shared-memory op (inference only)
    skipped: nothing is JIT-compiled at start-up (it would take minutes and a
    C++ toolchain). One process: DeepSpeed gets a process group of one."""
    extensions = tmp_path / "torch_extensions"
    proc = subprocess.run([sys.executable, "-m", "launcher", "run", "configs/cpu_test.yaml", "strategy.name=deepspeed",
                           "strategy.zero_stage=1", f"run.dir={tmp_path / 'run'}", "wandb.mode=disabled"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TORCH_EXTENSIONS_DIR": str(extensions)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "built successfully" not in proc.stdout + proc.stderr
    assert not extensions.exists() or not any(extensions.rglob("*.so"))
    test = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
            if '"test"' in line][0]
    assert test["test_accuracy"] > 0.9
