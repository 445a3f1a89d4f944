"""The CUDA path: NCCL backend, the GPU of the local rank. Runs only where a GPU
is present (never in CI, which has none)."""

import pytest
import torch

from dist_train.config import load_config
from dist_train.env import DistEnv
from dist_train.resolve import resolve
from dist_train.trainer import Trainer

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none")]


def test_env_picks_the_local_ranks_gpu_and_nccl():
    env = DistEnv.from_env({"LOCAL_RANK": "0"})
    assert env.device == "cuda:0" and env.backend == "nccl"


def test_cuda_training_matches_cpu_training():
    overrides = ["data.source=synthetic", "train.epochs=2", "model.hidden_sizes=[16]"]
    results = {}
    for device in ("cpu", "cuda"):
        cfg = load_config(None, overrides + [f"dist.device={device}"])
        env = DistEnv.from_env({}, device=device)
        model = Trainer(cfg, env, resolve(cfg, 1)).fit().model
        results[device] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    for key, value in results["cpu"].items():
        assert torch.allclose(value, results["cuda"][key], atol=1e-4), key
