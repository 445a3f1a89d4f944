"""The CUDA device choice: the local rank's GPU and NCCL. Runs only where a GPU
is present (never in CI, which has none)."""

import pytest
import torch

from dist_train.env import DistEnv


pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none")]


def test_env_picks_the_local_ranks_gpu_and_nccl():
    env = DistEnv.from_env({"LOCAL_RANK": "0"})
    assert env.device == "cuda:0" and env.backend == "nccl"
