"""DistEnv: built once from torch's variables, or by hand in tests."""

import pytest

from dist_train.env import DistEnv
from dist_train.errors import DistTrainError


def test_plain_process_is_rank0_of_one_on_cpu():
    env = DistEnv.from_env({}, device="cpu")
    assert env == DistEnv(rank=0, local_rank=0, world_size=1, device="cpu", backend="gloo")
    assert env.is_rank0 and not env.is_distributed


def test_torchrun_variables_are_read():
    env = DistEnv.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                            "GROUP_RANK": "1"}, device="cpu")
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size, env.node_rank) == (3, 4, 1, 2, 1)
    assert not env.is_rank0 and env.is_distributed and env.backend == "gloo"


def test_inconsistent_environment_is_reported():
    with pytest.raises(DistTrainError, match="RANK=2 is outside WORLD_SIZE=2"):
        DistEnv.from_env({"RANK": "2", "WORLD_SIZE": "2"}, device="cpu")
    with pytest.raises(DistTrainError, match="WORLD_SIZE='two' is not an integer"):
        DistEnv.from_env({"WORLD_SIZE": "two"}, device="cpu")


def test_asking_for_cuda_without_a_gpu_says_so():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the message is for machines without one")
    with pytest.raises(DistTrainError, match="torch sees no CUDA device"):
        DistEnv.from_env({}, device="cuda")
    assert DistEnv.from_env({}, device="auto").device == "cpu"


def test_cuda_device_index_follows_the_local_rank_or_the_one_gpu_a_task_was_given():
    """Pure logic (no GPU here): SLURM's --gpus-per-task leaves each task one
    visible GPU while LOCAL_RANK counts the node's tasks."""
    from dist_train.env import cuda_device_index

    assert cuda_device_index(1, 4, None) == 1
    assert cuda_device_index(3, 1, "3") == 0  # one task, one GPU: it is device 0 of what the task sees
    with pytest.raises(DistTrainError, match="only 1 GPU"):
        cuda_device_index(1, 1, None)  # no sign the scheduler bound one GPU per task
    with pytest.raises(DistTrainError, match="only 2 GPU"):
        cuda_device_index(2, 2, "0,1")
