"""SLURM's variables become torch's, with hints for the usual mistakes."""

import pytest

from dist_train.errors import DistTrainError
from dist_train.slurm_env import expand_hostlist, tasks_on_node, torch_env_from_slurm


def test_host_lists_expand():
    assert expand_hostlist("node[01-03,07],gpu5") == ["node01", "node02", "node03", "node07", "gpu5"]
    assert expand_hostlist("a1,b2") == ["a1", "b2"]
    assert expand_hostlist("x[8-10]y") == ["x8y", "x9y", "x10y"]


def test_tasks_per_node_formats():
    assert tasks_on_node("2(x3),1", 0) == 2 and tasks_on_node("2(x3),1", 2) == 2 and tasks_on_node("2(x3),1", 3) == 1
    assert tasks_on_node("4", 0) == 4


SRUN = {"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1",
        "SLURM_NODEID": "1", "SLURM_TASKS_PER_NODE": "2(x2)", "SLURM_JOB_NODELIST": "gpu[07-08]"}


def test_srun_one_task_per_gpu_maps_to_torch_variables():
    env = torch_env_from_slurm(SRUN)
    assert env == {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "1",
                   "MASTER_ADDR": "gpu07", "MASTER_PORT": str(15000 + 4242 % 20000)}


def test_nothing_to_translate_outside_slurm_or_under_torchrun():
    assert torch_env_from_slurm({}) == {}
    assert torch_env_from_slurm({**SRUN, "RANK": "0"}) == {}  # torchrun inside the allocation already decided
    assert torch_env_from_slurm({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "1"}) == {}  # a one-task batch script


def test_several_tasks_without_srun_gets_a_hint():
    with pytest.raises(DistTrainError, match="not started by srun.*srun dist-train run CONFIG"):
        torch_env_from_slurm({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "4"})


def test_more_tasks_than_gpus_gets_a_hint():
    with pytest.raises(DistTrainError, match="2 tasks on this node but 1 GPU.*--ntasks-per-node=1"):
        torch_env_from_slurm(SRUN, gpus_on_node=1)
