"""Helpers that test files of more than one tier share (a test file imports
these, never another test file): stopping a run at a step and comparing runs,
small run configs, DeepSpeed runs, reading W&B's offline runs, launching CPU
jobs, SLURM job states, and small fixtures of the metrics, shards, prepare,
check and batch-norm tests. Each section names the files that use it."""

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from dist_train.checkpoint import find_latest_valid
from dist_train.comm import Comm
from dist_train.config import DataConfig, ModelConfig, load_config
from dist_train.data.loader import eval_shard
from dist_train.data.shards import write_dataset
from dist_train.data.sources import Split
from dist_train.env import DistEnv
from dist_train.losses import build_loss
from dist_train.metrics import evaluate
from dist_train.models import build_model
from dist_train.parts import build_parts
from dist_train.resolve import resolve
from dist_train.run import run
from dist_train.trainer import Trainer
from tests.conftest import REPO
from tests.multiproc import kill_tree


# ------------------------------------------------------------ a trainer from a config
# integration and benchmarks: what dist_train.run builds, without a run directory unless given

def build_trainer(cfg, env, data=None, **kwargs) -> Trainer:
    """Parts from the config (and `data`, when given), then the trainer."""
    resolved = resolve(cfg, env.world_size)
    comm = kwargs.pop("comm", None) or Comm.of(env)
    return Trainer(cfg, env, resolved, build_parts(cfg, env, resolved, comm, data), comm, **kwargs)


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


def assert_same_final_state(whole, resumed, step):
    """Two `final_state`s are bit-identical (atol = rtol = 0) at global step `step`."""
    assert whole["step"] == resumed["step"] == step
    for key, value in whole["model"].items():
        assert np.array_equal(np.asarray(value), np.asarray(resumed["model"][key])), key
    for pid, state in whole["optimizer"].items():
        for key, value in state.items():
            assert np.array_equal(np.asarray(value), np.asarray(resumed["optimizer"][pid][key])), (pid, key)
    assert whole["events"] == resumed["events"]


# ------------------------------------------------------------ a job under `dist-train launch`, read as it runs
# e2e: test_stop_and_restart, test_stalls

class Job:
    """`dist-train launch` in a session of its own (as a shell runs a foreground
    job), its output collected as it comes so a test can wait for a line."""

    def __init__(self, args, restarts=0, launch=("launch", "--nproc-per-node", "2")):
        self.proc = subprocess.Popen([sys.executable, "-m", "launcher", *launch, "--max-restarts", str(restarts),
                                      *map(str, args)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        self.pid = self.proc.pid
        self.lines: list[str] = []
        self.times: list[float] = []  # time.monotonic() when each line arrived
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.times.append(time.monotonic())
            self.lines.append(line)

    def when(self, text: str) -> float | None:
        """When the first line holding `text` arrived (time.monotonic()), or None."""
        return next((t for t, line in zip(self.times, self.lines) if text in line), None)

    def poll(self):
        return self.proc.poll()

    @property
    def stdout(self):  # for wait_for_step's report when the job ends early
        return io.StringIO(self.output)

    @property
    def returncode(self):
        return self.proc.returncode

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for_output(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            assert self.proc.poll() is None, f"the job ended before printing {text!r}:\n{self.output}"
            assert time.monotonic() < deadline, f"no {text!r} within {timeout}s:\n{self.output}"
            time.sleep(0.05)

    def finish(self, timeout=240):
        try:
            self.proc.wait(timeout=timeout)
            self._reader.join(timeout=10)
        finally:
            kill_tree(self.pid)
        return self.proc.returncode, self.output


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


# ------------------------------------------------------------ SLURM jobs
# e2e: test_slurm_cluster, test_slurm_multinode

ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")


def wait_until(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# ------------------------------------------------------------ metrics over a split
# test_metrics (unit, integration)

def metrics_model_and_split():
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden_sizes=(8,)), (5,), 3)
    gen = torch.Generator().manual_seed(1)
    split = Split(torch.randn(103, 5, generator=gen), torch.randint(0, 3, (103,), generator=gen))
    return model, split


def metrics_eval_worker(env: DistEnv, batch_size: int) -> dict:
    model, split = metrics_model_and_split()
    return evaluate(model, eval_shard(split, env, batch_size), build_loss("cross_entropy"), Comm.of(env), env.device)


def metrics_reference() -> dict:
    model, split = metrics_model_and_split()
    with torch.no_grad():
        logits = model(split.inputs)
    correct = int((logits.argmax(1) == split.targets).sum())
    loss = torch.nn.functional.cross_entropy(logits.double(), split.targets).item()
    return {"accuracy": correct / 103, "loss": loss, "count": 103}


# ------------------------------------------------------------ shards that say which sample they hold
# test_shards (unit, integration)

def indexed_dataset(path, n_train=1000, shards=8, block_size=64):
    """Inputs that say which sample they are: input[i] = [i], float32."""
    def split(lo, n):
        idx = np.arange(lo, lo + n)
        return idx.astype(np.float32)[:, None], idx % 5
    return write_dataset(path, "indexed", {"train": split(0, n_train), "val": split(100_000, 37),
                                           "test": split(200_000, 41)},
                         5, {"train": shards, "val": 3, "test": 2}, block_size)


def data_cfg(path, **kw):
    return DataConfig(source="shards", path=str(path), normalize="none", **kw)


def corrupt(kind, root):
    """Damage a prepared set the way the field does; return the file named in the error."""
    manifest = json.loads((root / "manifest.json").read_text())
    shard = root / "train-00001.tar"
    if kind == "truncated":
        shard.write_bytes(shard.read_bytes()[:3000])
    elif kind == "corrupt":
        data = bytearray(shard.read_bytes())
        data[600:1600] = bytes(b ^ 0xFF for b in data[600:1600])  # flipped bits over data and a header
        shard.write_bytes(bytes(data))
    elif kind == "missing_field":
        # a well-formed tar whose second block lacks targets; the manifest agrees with the bytes
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for key, names in (("a", ("inputs.npy", "targets.npy")), ("b", ("inputs.npy",))):
                for name in names:
                    arr = np.zeros((4, 1), np.float32) if name == "inputs.npy" else np.zeros(4, np.int64)
                    payload = io.BytesIO()
                    np.save(payload, arr)
                    info = tarfile.TarInfo(f"{key}.{name}")
                    info.size = len(payload.getvalue())
                    tar.addfile(info, io.BytesIO(payload.getvalue()))
        shard.write_bytes(buf.getvalue())
        entry = manifest["splits"]["train"]["shards"][1]
        entry.update(bytes=len(buf.getvalue()), sha256=hashlib.sha256(buf.getvalue()).hexdigest())
        (root / "manifest.json").write_text(json.dumps(manifest))
    elif kind == "manifest_mismatch":
        manifest["splits"]["train"]["shards"][1]["samples"] += 5
        (root / "manifest.json").write_text(json.dumps(manifest))
    elif kind == "missing_shard":
        shard.unlink()
    return str(shard)


# ------------------------------------------------------------ CSV files
# test_prepare_sources (unit, e2e)

def write_csv(path, rows):
    path.write_text("\n".join(",".join(map(str, row)) for row in rows) + "\n")
    return path


# ------------------------------------------------------------ `dist-train check` output
# test_check (unit, e2e)

def check_line(lines, name):
    return next(text for text in lines if text[6:].startswith(name))


# ------------------------------------------------------------ batch norm
# test_sync_batchnorm (unit, integration)

CHANNELS = 3


def affine_init(bn):
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 1.5, CHANNELS))
        bn.bias.copy_(torch.linspace(-0.2, 0.2, CHANNELS))
