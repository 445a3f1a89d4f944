"""Helpers that test files of more than one tier share (a test file imports
these, never another test file): stopping a run at a step and comparing runs,
small run configs, DeepSpeed runs, reading W&B's offline runs, launching a
CPU job. Each section names the files that use it."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from dist_train.checkpoint import find_latest_valid
from dist_train.config import load_config
from dist_train.env import DistEnv
from dist_train.parts import build_parts
from dist_train.run import run
from tests.conftest import REPO


# ------------------------------------------------------------ stopping a run, comparing runs
# integration: test_resume, test_precision, test_faults, test_tracking, test_deepspeed; e2e: test_deepspeed

VOLATILE = {"time", "epoch_seconds", "samples_per_s", "path", "checkpoint"}


class SignalAt:
    """A training loader that sends this process a real SIGTERM as it hands out
    step `at` (counted over the run, from a fresh start): the trainer trains that
    step, then finds the stop request at its stop check."""

    def __init__(self, loader, at: int, signal_here: bool) -> None:
        self.loader, self.at, self.signal_here, self.handed = loader, at, signal_here, 0

    @property
    def steps_per_epoch(self) -> int:
        return self.loader.steps_per_epoch

    def epoch(self, epoch, start_step=0):
        for step in self.loader.epoch(epoch, start_step):
            self.handed += 1
            if self.handed == self.at and self.signal_here:
                os.kill(os.getpid(), signal.SIGTERM)
            yield step


def sigterm_at(steps: int):
    """Parts (for `run(..., build=...)`) whose rank 0 gets a real SIGTERM during step `steps`."""
    def build(cfg, env, resolved, comm):
        parts = build_parts(cfg, env, resolved, comm)
        parts.data.train = SignalAt(parts.data.train, steps, env.rank == 0)
        return parts
    return build


def final_state(run_dir):
    info = find_latest_valid(run_dir)
    model = torch.load(info.path / "model.pt", weights_only=True)
    trainer = torch.load(info.path / "trainer.pt", weights_only=True)
    events = [{k: v for k, v in json.loads(line).items() if k not in VOLATILE}
              for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    # the interrupted run has its own extra checkpoint, stop and resume records
    events = [e for e in events if e["event"] not in ("resume", "stop", "checkpoint")]
    return {"model": model, "optimizer": trainer["strategy"]["optimizer"]["state"], "events": events,
            "step": trainer["state"]["global_step"]}


# ------------------------------------------------------------ a small checkpointed run
# test_checkpoint (integration, e2e)

SMALL_RUN = ["data.source=synthetic", "data.num_samples=300", "data.num_features=8", "data.num_classes=3",
             "model.hidden_sizes=[8]", "train.global_batch_size=32", "train.epochs=3", "dist.device=cpu",
             "checkpoint.every_steps=4", "checkpoint.keep_last=2", "train.log_every_steps=5"]


def small_run(run_dir, *extra, env=None):
    return run(load_config(None, [*SMALL_RUN, f"run.dir={run_dir}", *extra]), env or DistEnv())


# ------------------------------------------------------------ DeepSpeed runs
# test_deepspeed (unit, integration, e2e)

DEEPSPEED_BASE = ["data.source=synthetic", "data.num_samples=200", "data.num_features=12", "data.num_classes=3",
                  "data.val_fraction=0.1", "data.test_fraction=0.15", "model.hidden_sizes=[16,8]",
                  "train.global_batch_size=32", "train.epochs=2", "dist.device=cpu", "optim.name=adamw",
                  "optim.lr=0.01", "optim.weight_decay=0.01", "train.grad_clip_norm=0.5"]


# every tensor's size divisible by the 2 workers: ZeRO-3 pads an uneven partition
# with uninitialised memory that no computation reads but the file holds
DEEPSPEED_RESUME = ["data.source=synthetic", "data.num_samples=600", "data.num_features=12", "data.num_classes=4",
          "model.hidden_sizes=[16]", "model.dropout=0.3", "optim.name=adam", "optim.lr=0.01",
          "train.global_batch_size=64", "train.epochs=3", "train.log_every_steps=4", "train.stop_check_every_steps=1",
          "checkpoint.every_steps=5", "checkpoint.keep_last=2", "schedule.name=cosine", "schedule.warmup_steps=3",
          "dist.device=cpu", "strategy.name=deepspeed", "wandb.mode=disabled", "run.progress=false"]


def stop_and_resume(env, root, stage):
    whole, broken = Path(root) / f"whole-{stage}", Path(root) / f"broken-{stage}"
    overrides = DEEPSPEED_RESUME + [f"strategy.zero_stage={stage}"]
    assert run(load_config(None, overrides + [f"run.dir={whole}"]), env) == 0
    assert run(load_config(None, overrides + [f"run.dir={broken}"]), env, sigterm_at(10)) == 75
    assert run(load_config(None, overrides + [f"run.dir={broken}"]), env) == 0
    return str(whole), str(broken)


def events(run_dir):
    records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in records
            if r["event"] not in ("resume", "stop", "checkpoint")]


# ------------------------------------------------------------ W&B offline runs
# test_tracking (unit, integration, e2e); e2e test_deepspeed

SMALL_WANDB = ["data.source=synthetic", "data.num_samples=300", "data.num_features=8", "data.num_classes=3",
               "model.hidden_sizes=[8]", "train.global_batch_size=32", "train.epochs=3", "dist.device=cpu",
               "train.log_every_steps=5", "train.stop_check_every_steps=1", "wandb.mode=offline"]


def leet(path, *flags):
    proc = subprocess.run(["wandb", "leet", "inspect", *flags, "--json", str(path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def history(run_path):
    rows = [json.loads(line) for line in leet(run_path).splitlines() if line.strip()]
    return [r["history"]["item"] for r in rows if r.get("type") == "history"]


def metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def offline_runs(run_dir):
    return sorted((Path(run_dir) / "wandb").glob("offline-run-*"))


# ------------------------------------------------------------ fp16
# test_precision (unit, integration)

SMALL_FP16 = ["data.source=synthetic", "data.num_samples=600", "data.num_features=12", "data.num_classes=3",
              "model.hidden_sizes=[16]", "optim.name=adam", "optim.lr=0.01", "train.global_batch_size=64",
              "train.epochs=3", "train.stop_check_every_steps=1", "checkpoint.every_steps=5", "dist.device=cpu",
              "train.precision=fp16", "wandb.mode=disabled", "run.progress=false"]


# ------------------------------------------------------------ a CPU job under `dist-train launch`
# e2e: test_faults, test_deepspeed

CPU_JOB = ["configs/cpu_test.yaml", "train.epochs=12", "checkpoint.every_steps=5", "checkpoint.keep_last=3",
           "train.stop_check_every_steps=1", "model.dropout=0.2"]


def launch(run_dir, *extra, restarts=0):
    return subprocess.Popen([sys.executable, "-m", "launcher", "launch", "--nproc-per-node", "2", "--max-restarts",
                             str(restarts), *CPU_JOB, f"run.dir={run_dir}", *extra],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def final_weights(run_dir):
    return torch.load(find_latest_valid(run_dir).path / "model.pt", weights_only=True)


def finish(proc, timeout=300):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out
