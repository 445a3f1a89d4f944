"""The CUDA path: CUDA training against CPU training, and bf16/fp16 against
fp32 on one GPU over NCCL. Runs only where a GPU is present (never in CI,
which has none)."""

import pytest
import torch

from dist_train.config import load_config
from dist_train.env import DistEnv
from dist_train.trainer import Trainer
from tests.conftest import REPO


pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none")]


def test_cuda_training_matches_cpu_training():
    overrides = ["data.source=synthetic", "train.epochs=2", "model.hidden_sizes=[16]"]
    results = {}
    for device in ("cpu", "cuda"):
        cfg = load_config(None, overrides + [f"dist.device={device}"])
        env = DistEnv.from_env({}, device=device)
        model = Trainer.build(cfg, env).fit().model
        results[device] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    for key, value in results["cpu"].items():
        assert torch.allclose(value, results["cuda"][key], atol=1e-4), key


def precision_accuracies(env, config):
    """One GPU, a process group of one over NCCL: every precision under DDP and DeepSpeed."""
    out = {}
    for strategy in ("ddp", "deepspeed"):
        for precision in ("fp32", "bf16", "fp16"):
            if strategy == "deepspeed":
                try:
                    import deepspeed  # noqa: F401
                except ImportError:
                    continue
            cfg = load_config(config, ["run.progress=false", "wandb.mode=disabled", "dist.device=cuda",
                                       f"strategy.name={strategy}", f"train.precision={precision}"])
            out[(strategy, precision)] = Trainer.build(cfg, env).fit().test["accuracy"]
    return out


@pytest.mark.parametrize("config", ["configs/quickstart.yaml", "configs/digits_cnn.yaml"])
def test_bf16_and_fp16_reach_the_fp32_accuracy_band_under_ddp_and_deepspeed(config):
    from tests.multiproc import run_workers

    path = f"{REPO}/{config}"
    (result,) = run_workers(precision_accuracies, 1, path, timeout_s=900, device="cuda")
    for (strategy, precision), accuracy in result.items():
        reference = result[(strategy, "fp32")]
        assert abs(accuracy - reference) <= 0.03, f"{config} {strategy} {precision}: {accuracy:.3f} vs fp32 {reference:.3f}"
