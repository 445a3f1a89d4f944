"""The deepspeed strategy (ZeRO stages 0-3) on CPU over gloo with 2 real
worker processes: the same weights as DDP, exact resume through DeepSpeed's
own checkpoint files inside ours, and a corrupt DeepSpeed file refused by the
manifest."""

from pathlib import Path

import numpy as np
import pytest
import torch

from dist_train.checkpoint import find_latest_valid, verify_checkpoint
from dist_train.config import load_config
from tests.helpers import build_trainer
from tests.helpers import DEEPSPEED_BASE as BASE, events, stop_and_resume
from tests.multiproc import run_workers, to_numpy


deepspeed = pytest.importorskip("deepspeed", reason="DeepSpeed is an optional extra: pip install -e '.[deepspeed]'")


STAGES = [0, 1, 2, 3]


def final_weights(env, overrides):
    cfg = load_config(None, BASE + overrides)
    trainer = build_trainer(cfg, env)
    trainer.fit()
    return to_numpy(trainer.strategy.model_state_dict())  # gathered under ZeRO-3


def every_stage(env, accum):
    cfg = load_config(None, BASE + ["strategy.name=ddp"])
    init = to_numpy(build_trainer(cfg, env).strategy.model_state_dict())
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
