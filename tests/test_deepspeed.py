"""The deepspeed strategy (ZeRO stages 0-3) on CPU over gloo with 2 real
worker processes: the same weights as DDP, exact resume through DeepSpeed's
own checkpoint files inside ours, consolidated weights for plain torch, and a
clear message when DeepSpeed is not installed."""

import json
import os
import subprocess
import time
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dist_train.checkpoint import find_latest_valid, verify_checkpoint
from dist_train.config import load_config
from dist_train.errors import ConfigError
from dist_train.resolve import resolve
from dist_train.run import run
from dist_train.trainer import Trainer
from tests.multiproc import run_workers, to_numpy, worker_pids
from tests.test_resume import VOLATILE, sigterm_at

deepspeed = pytest.importorskip("deepspeed", reason="DeepSpeed is an optional extra: pip install -e '.[deepspeed]'")

REPO = Path(__file__).resolve().parent.parent
BASE = ["data.source=synthetic", "data.num_samples=200", "data.num_features=12", "data.num_classes=3",
        "data.val_fraction=0.1", "data.test_fraction=0.15", "model.hidden_sizes=[16,8]",
        "train.global_batch_size=32", "train.epochs=2", "dist.device=cpu", "optim.name=adamw", "optim.lr=0.01",
        "optim.weight_decay=0.01", "train.grad_clip_norm=0.5"]
STAGES = [0, 1, 2, 3]


def final_weights(env, overrides):
    cfg = load_config(None, BASE + overrides)
    trainer = Trainer.build(cfg, env)
    trainer.fit()
    return to_numpy(trainer.strategy.model_state_dict())  # gathered under ZeRO-3


def every_stage(env, accum):
    cfg = load_config(None, BASE + ["strategy.name=ddp"])
    init = to_numpy(Trainer.build(cfg, env).strategy.model_state_dict())
    ddp = final_weights(env, ["strategy.name=ddp"])
    return init, ddp, {stage: final_weights(env, ["strategy.name=deepspeed", f"strategy.zero_stage={stage}",
                                            f"train.grad_accum_steps={accum}"]) for stage in STAGES}


@pytest.mark.parametrize("accum", [1, 2])
def test_every_zero_stage_matches_ddp_in_fp32(accum):
    """Tolerance 1e-6 (fp32): ZeRO reduces in a different order than DDP's buckets."""
    (init, ddp, stages), _ = run_workers(every_stage, 2, accum, timeout_s=300)
    # training moved the weights: the comparison is not of two untouched inits
    assert max(float(np.max(np.abs(ddp[k] - init[k]))) for k in ddp) > 1e-2
    for stage, weights in stages.items():
        assert weights.keys() == ddp.keys()
        for key, value in ddp.items():
            diff = float(np.max(np.abs(weights[key] - value)))
            assert diff <= 1e-6, f"ZeRO stage {stage}, accum {accum}, {key}: max |diff| {diff:.3g}"


# ------------------------------------------------------------ checkpoints

# every tensor's size divisible by the 2 workers: ZeRO-3 pads an uneven partition
# with uninitialised memory that no computation reads but the file holds
RESUME = ["data.source=synthetic", "data.num_samples=600", "data.num_features=12", "data.num_classes=4",
          "model.hidden_sizes=[16]", "model.dropout=0.3", "optim.name=adam", "optim.lr=0.01",
          "train.global_batch_size=64", "train.epochs=3", "train.log_every_steps=4", "train.stop_check_every_steps=1",
          "checkpoint.every_steps=5", "checkpoint.keep_last=2", "schedule.name=cosine", "schedule.warmup_steps=3",
          "dist.device=cpu", "strategy.name=deepspeed", "wandb.mode=disabled", "run.progress=false"]


def ds_files(path):
    """DeepSpeed's files of a checkpoint, loaded without unpickling (as resume does)."""
    from dist_train.strategy.deepspeed import _deepspeed_safe_globals

    out = {}
    with torch.serialization.safe_globals(_deepspeed_safe_globals()):
        for file in sorted((path / "deepspeed").glob("*.pt")):
            out[file.name] = torch.load(file, map_location="cpu", weights_only=True)
    return out


def tensors(obj, prefix=""):
    """Every tensor in a nested state, by path."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    found = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            found.update(tensors(v, f"{prefix}/{k}"))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found.update(tensors(v, f"{prefix}/{i}"))
    return found


def stop_and_resume(env, root, stage):
    whole, broken = Path(root) / f"whole-{stage}", Path(root) / f"broken-{stage}"
    overrides = RESUME + [f"strategy.zero_stage={stage}"]
    assert run(load_config(None, overrides + [f"run.dir={whole}"]), env) == 0
    assert run(load_config(None, overrides + [f"run.dir={broken}"]), env, sigterm_at(10)) == 75
    assert run(load_config(None, overrides + [f"run.dir={broken}"]), env) == 0
    return str(whole), str(broken)


def events(run_dir):
    records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in records
            if r["event"] not in ("resume", "stop", "checkpoint")]


@pytest.mark.parametrize("stage", [1, 3])
def test_stop_and_resume_under_deepspeed_is_exact(tmp_path, stage):
    """Stopped by SIGTERM mid-epoch 2 (step 10), resumed: the final weights,
    DeepSpeed's optimizer partitions and the logged metrics equal the
    uninterrupted run's (atol = rtol = 0)."""
    (whole, broken), _ = run_workers(stop_and_resume, 2, str(tmp_path), stage, timeout_s=300)
    a, b = find_latest_valid(Path(whole)), find_latest_valid(Path(broken))
    assert a.global_step == b.global_step == 21
    assert any(name.startswith("deepspeed/") and "optim_states" in name for name in a.manifest["files"])
    model_a = torch.load(a.path / "model.pt", weights_only=True)
    model_b = torch.load(b.path / "model.pt", weights_only=True)
    for key, value in model_a.items():
        assert torch.equal(value, model_b[key]), key
    files_a, files_b = ds_files(a.path), ds_files(b.path)
    assert files_a.keys() == files_b.keys() and any("optim_states" in n for n in files_a)
    ta, tb = tensors(files_a), tensors(files_b)
    assert ta.keys() == tb.keys() and len(ta) > 0
    for key, value in ta.items():
        assert torch.equal(value, tb[key]), key
    assert events(whole) == events(broken)
    assert [e for e in events(whole) if e["event"] == "test"][0]["test_accuracy"] > 0.6  # 4 classes: 0.25 by chance


def test_a_corrupt_deepspeed_file_is_refused_by_the_manifest(tmp_path):
    (whole, _), _ = run_workers(stop_and_resume, 2, str(tmp_path), 2, timeout_s=300)
    info = find_latest_valid(Path(whole))
    shard = sorted((info.path / "deepspeed").glob("*optim_states.pt"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(Exception, match="does not match its SHA-256"):
        verify_checkpoint(info.path)


def test_consolidated_weights_load_with_plain_torch(tmp_path):
    """ZeRO-3 shards the parameters; model.pt (and `dist-train export`) still
    holds the whole model, loadable into a plain torch module."""
    (whole, _), _ = run_workers(stop_and_resume, 2, str(tmp_path), 3, timeout_s=300)
    out = tmp_path / "weights.pt"
    proc = subprocess.run([sys.executable, "-m", "launcher", "export", whole, "--out", str(out)], cwd=REPO,
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


# ------------------------------------------------------------ configuration

def test_raw_deepspeed_section_cannot_set_what_our_config_owns():
    """Refused when the config is loaded, so `launch` refuses it before any worker starts."""
    from dist_train.strategy.deepspeed import deepspeed_config

    with pytest.raises(ConfigError, match="strategy.deepspeed_config.gradient_clipping.*set train.grad_clip_norm"):
        load_config(None, BASE + ["strategy.name=deepspeed", "strategy.deepspeed_config={gradient_clipping: 1.0}"])
    with pytest.raises(ConfigError, match="zero_optimization.stage.*set strategy.zero_stage"):
        load_config(None, BASE + ["strategy.name=deepspeed", "strategy.deepspeed_config={zero_optimization: {stage: 3}}"])
    cfg = load_config(None, BASE + ["strategy.name=deepspeed", "strategy.zero_stage=1", "train.grad_accum_steps=2",
                                    "strategy.deepspeed_config={zero_optimization: {reduce_bucket_size: 1000}}"])
    ds = deepspeed_config(cfg, resolve(cfg, 2))
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (32, 8, 2)
    assert ds["zero_optimization"] == {"stage": 1, "reduce_bucket_size": 1000}
    assert ds["gradient_clipping"] == 0.5


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


def test_deepspeed_keys_without_the_deepspeed_strategy_are_refused():
    with pytest.raises(ConfigError, match="strategy.zero_stage.*set strategy.name=deepspeed"):
        load_config(None, BASE + ["strategy.zero_stage=3"])


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
    from tests.test_faults import launch

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
    from tests.test_faults import final_weights, finish
    from tests.test_tracking import leet, offline_runs

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
