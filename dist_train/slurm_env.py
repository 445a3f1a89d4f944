"""Translate "started by SLURM's srun" into torch's environment (RANK,
WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR,
MASTER_PORT). Read once, where a worker process sets itself up
(dist_train.worker_env); everything after sees torch's variables alone."""

from __future__ import annotations

import re
from collections.abc import Mapping

from dist_train.errors import DistTrainError


def expand_hostlist(hostlist: str) -> list[str]:
    """SLURM's compressed host lists: "node[01-03,07],gpu5" -> node01 node02 node03 node07 gpu5."""
    hosts: list[str] = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", hostlist):
        match = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", part)
        if not match:
            hosts.append(part)
            continue
        prefix, ranges, suffix = match.groups()
        for item in ranges.split(","):
            if "-" in item:
                low, high = item.split("-", 1)
                hosts += [f"{prefix}{n:0{len(low)}d}{suffix}" for n in range(int(low), int(high) + 1)]
            else:
                hosts.append(f"{prefix}{item}{suffix}")
    return hosts


def tasks_on_node(tasks_per_node: str, node_id: int) -> int:
    """SLURM_TASKS_PER_NODE ("2(x3),1") for one node."""
    counts: list[int] = []
    for item in tasks_per_node.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item.strip())
        if not match:
            raise DistTrainError(f"cannot read SLURM_TASKS_PER_NODE={tasks_per_node!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts[node_id] if node_id < len(counts) else counts[-1]


def torch_env_from_slurm(environ: Mapping[str, str], gpus_on_node: int = 0) -> dict[str, str]:
    """The torch variables to set for this process, or {} when there is nothing to
    translate (not under SLURM, or a launcher such as torchrun already set RANK)."""
    if "RANK" in environ or "SLURM_JOB_ID" not in environ:
        return {}
    ntasks = int(environ.get("SLURM_NTASKS", environ.get("SLURM_NPROCS", "1")))
    if "SLURM_PROCID" not in environ or "SLURM_STEP_ID" not in environ:
        if ntasks > 1:
            raise DistTrainError(
                f"this job has {ntasks} SLURM tasks but this process was not started by srun, so it cannot know "
                "its rank; in the batch script run `srun dist-train run CONFIG` (one task per GPU), or "
                "`srun --ntasks-per-node=1 dist-train launch --nproc-per-node G ...` (one task per node)")
        return {}
    node_id = int(environ.get("SLURM_NODEID", "0"))
    local_world = tasks_on_node(environ.get("SLURM_STEP_TASKS_PER_NODE", environ.get("SLURM_TASKS_PER_NODE", "1")),
                                node_id)
    if gpus_on_node and local_world > gpus_on_node:
        raise DistTrainError(
            f"{local_world} tasks on this node but {gpus_on_node} GPU(s): with one task per GPU set "
            f"#SBATCH --ntasks-per-node={gpus_on_node} (and --gpus-per-node={gpus_on_node})")
    nodes = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST") or "127.0.0.1"
    master = environ.get("MASTER_ADDR") or expand_hostlist(nodes)[0]
    port = environ.get("MASTER_PORT") or str(15000 + int(environ["SLURM_JOB_ID"]) % 20000)
    return {"RANK": environ["SLURM_PROCID"], "WORLD_SIZE": str(ntasks), "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
            "LOCAL_WORLD_SIZE": str(local_world), "GROUP_RANK": str(node_id), "MASTER_ADDR": master,
            "MASTER_PORT": port}
