"""A process sets itself up as a worker of a job, whoever started it (plain
python, torchrun, srun, `dist-train launch`, a script calling
`dist_train.fit`): one function, so `dist-train run` and the Python API see
the same environment."""

from __future__ import annotations

import os
from pathlib import Path

from dist_train.config import Config
from dist_train.env import DistEnv
from dist_train.slurm_env import torch_env_from_slurm


def worker_env(cfg: Config) -> DistEnv:
    """SLURM's ranks as torch's (under srun), LOCAL_RANK for a lone process
    (DeepSpeed reads it from the environment), DeepSpeed on a CPU kept off any
    GPU it sees, NCCL's flight recorder on; then this worker's place in the job."""
    import torch

    gpus = torch.cuda.device_count() if cfg.dist.device != "cpu" else 0
    os.environ.update(torch_env_from_slurm(os.environ, gpus))
    os.environ.setdefault("LOCAL_RANK", "0")
    if cfg.strategy.name == "deepspeed" and cfg.dist.device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    set_nccl_flight_recorder(Path(cfg.run.dir))  # a GPU hang leaves a trace (under srun or torchrun too)
    return DistEnv.from_env(device=cfg.dist.device)


def nccl_flight_recorder(run_dir: Path | None) -> dict[str, str]:
    """What makes a GPU hang leave a trace (NCCL's flight recorder): workers
    record their last collectives, abort a timed-out one asynchronously, dump
    the record on a timeout into RUN_DIR/nccl-trace-rank-N, and dist-train's
    stall watchdog dumps it into RUN_DIR/hang/ when it reports a stall. Read
    a dump with `python -m torch.distributed.flight_recorder.fr_trace`.
    Values the user set are kept."""
    found = {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "3", "TORCH_NCCL_DUMP_ON_TIMEOUT": "1",
             "TORCH_FR_BUFFER_SIZE": "2000"}  # torch >= 2.7's names (TORCH_NCCL_TRACE_BUFFER_SIZE before)
    if run_dir is not None:
        found["TORCH_FR_DUMP_TEMP_FILE"] = str(Path(run_dir).resolve() / "nccl-trace-rank-")
    return found


def set_nccl_flight_recorder(run_dir: Path | None) -> None:
    for key, value in nccl_flight_recorder(run_dir).items():
        os.environ.setdefault(key, value)
