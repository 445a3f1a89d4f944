"""Mixed precision on CPU: bf16 autocast under DDP and DeepSpeed, and fp16
autocast with a dynamic loss scaler under DDP (torch's CPU autocast supports
both). The scaler's state is checkpointed and an overflow skips the step and
lowers the scale. The GPU variants (fp16 under DeepSpeed, NCCL) are in
tests/integration/test_gpu.py and skip without CUDA; fp16 under DeepSpeed on
CPU is refused (tests/unit/test_precision.py)."""

import json

import torch

from dist_train.config import load_config
from dist_train.env import DistEnv
from dist_train.run import run
from dist_train.parts import build_parts
from tests.helpers import build_trainer
from tests.conftest import REPO
from tests.helpers import SMALL_FP16, final_state, sigterm_at
from tests.multiproc import run_workers


DIGITS = ["run.progress=false", "train.epochs=12", "wandb.mode=disabled", "dist.device=cpu"]


def test_accuracy(env, precision, strategy):
    cfg = load_config(f"{REPO}/configs/quickstart.yaml", DIGITS + [f"train.precision={precision}",
                                                                   f"strategy.name={strategy}"])
    result = build_trainer(cfg, env).fit()
    return result.test["accuracy"]


test_accuracy.__test__ = False  # a worker function, not a test


def accuracies(env):
    out = {(p, "ddp"): test_accuracy(env, p, "ddp") for p in ("fp32", "bf16", "fp16")}
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        return out
    out[("bf16", "deepspeed")] = test_accuracy(env, "bf16", "deepspeed")
    return out


def test_bf16_and_fp16_train_the_digits_mlp_to_the_fp32_accuracy_band():
    """2 workers: bf16 and fp16 (DDP) and bf16 (DeepSpeed ZeRO-2, when
    installed) within 3 points of fp32's test accuracy."""
    result, _ = run_workers(accuracies, 2, timeout_s=300)
    reference = result[("fp32", "ddp")]
    assert reference > 0.93
    for key, accuracy in result.items():
        assert abs(accuracy - reference) <= 0.03, f"{key}: {accuracy:.3f} against fp32's {reference:.3f}"


def test_fp16_loss_scaler_state_is_checkpointed_and_resume_is_exact(tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert run(load_config(None, SMALL_FP16 + [f"run.dir={whole}"]), DistEnv()) == 0
    assert run(load_config(None, SMALL_FP16 + [f"run.dir={broken}"]), DistEnv(), sigterm_at(10)) == 75
    assert run(load_config(None, SMALL_FP16 + [f"run.dir={broken}"]), DistEnv()) == 0
    a, b = final_state(whole), final_state(broken)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert a["events"] == b["events"]
    from dist_train.checkpoint import find_latest_valid

    scaler = torch.load(find_latest_valid(broken).path / "trainer.pt", weights_only=True)["strategy"]["scaler"]
    assert scaler["scale"] == 65536.0 and scaler["_growth_tracker"] == 21  # 21 steps without an overflow


def huge_initial_scale(cfg, env, resolved, comm):
    """Parts whose loss scale starts at 2^24: the first fp16 backward passes
    overflow (fp16 tops out at 65504)."""
    parts = build_parts(cfg, env, resolved, comm)
    parts.strategy.precision.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24)
    return parts


def test_fp16_overflow_skips_the_step_and_lowers_the_scale(tmp_path):
    assert run(load_config(None, SMALL_FP16 + ["train.epochs=6", f"run.dir={tmp_path}"]), DistEnv(),
               huge_initial_scale) == 0
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    skipped = [r for r in records if r["event"] == "skipped_step"]
    assert skipped and all(r["reason"] == "fp16 overflow" for r in skipped)
    scales = [r["loss_scale"] for r in skipped]
    assert scales == sorted(scales, reverse=True) and scales[-1] < 2.0**24
    test = [r for r in records if r["event"] == "test"][0]
    assert test["test_accuracy"] > 0.8  # training went on once the scale fitted
