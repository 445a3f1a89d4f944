"""Monitoring through the command line: one W&B run per job read back with
W&B's own reader, every row kept when the trainer is killed, a progress bar on
a terminal, and `dist-train report`."""

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dist_train.config import load_config
from dist_train.env import DistEnv
from dist_train.run import run
from tests.conftest import REPO
from tests.helpers import SMALL_WANDB, history, leet, metrics, offline_runs


def without_empty(tree):
    return {k: without_empty(v) if isinstance(v, dict) else v for k, v in tree.items() if v != {}}


@pytest.mark.slow
def test_two_worker_job_is_one_wandb_run_equal_to_metrics_jsonl(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "launcher", "launch", "--nproc-per-node", "2", "configs/cpu_test.yaml",
                           f"run.dir={tmp_path}", "wandb.mode=offline", "wandb.tags=[ci,cpu]", "wandb.group=tests"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = offline_runs(tmp_path)
    assert len(runs) == 1  # rank 0 alone made a run
    summary = json.loads(leet(runs[0], "--summary"))
    assert summary["state"] == "finished" and summary["project"] == "dist-train" and summary["tags"] == ["ci", "cpu"]
    # the resolved config without the keys the run never reads (the synthetic
    # source's sizes for the digits, DeepSpeed's keys under DDP; W&B keeps no empty mapping)
    from dist_train.config import relevant_dict

    written = load_config(tmp_path / "config.yaml")
    assert summary["config"] == without_empty(relevant_dict(written))
    assert "zero_stage" not in summary["config"]["strategy"] and "path" not in summary["config"]["data"]
    records = metrics(tmp_path)
    rows = history(runs[0])
    assert len(rows) == len(records)
    for index, (row, record) in enumerate(zip(rows, records)):
        assert row["_step"] == index
        assert {k: v for k, v in row.items() if not k.startswith("_")} == record
    val_losses = [r["val_loss"] for r in records if r["event"] == "epoch"]
    assert summary["summary"]["best_val_loss"] == min(val_losses)
    assert {r["event"] for r in records} >= {"start", "lr", "train", "epoch", "test", "checkpoint"}
    train = [r for r in records if r["event"] == "train"][0]
    assert {"loss", "lr", "grad_norm"} <= set(train)
    epoch = [r for r in records if r["event"] == "epoch"][0]
    assert {"train_loss", "val_loss", "val_accuracy", "lr", "samples_per_s", "epoch_seconds"} <= set(epoch)
    # the console lines reach the run's Logs tab (W&B's output.log), from the W&B writer process
    logs = (runs[0] / "files" / "output.log").read_text()
    assert "[start] world_size=2" in logs and "[test]" in logs


def test_a_killed_trainer_leaves_every_row_it_wrote_in_the_wandb_run(tmp_path):
    """kill -9 of the trainer: the W&B writer reads to the end of what was sent,
    ends the run as failed and exits; no row written before the kill is lost."""
    import signal
    import time

    from tests.multiproc import descendants, kill_tree, wait_for_step

    proc = subprocess.Popen([sys.executable, "-m", "launcher", "run", "configs/cpu_test.yaml", f"run.dir={tmp_path}",
                             "wandb.mode=offline", "train.epochs=200", "train.log_every_steps=1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    try:
        wait_for_step(tmp_path, 30, proc)
        writers = [pid for pid in descendants(proc.pid)
                   if b"dist_train.wandb_writer" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(writers) == 1
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 60
        while Path(f"/proc/{writers[0]}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)  # poll interval while waiting for the writer to exit
        assert not Path(f"/proc/{writers[0]}").exists(), "the W&B writer outlived its trainer by 60 s"
    finally:
        kill_tree(proc.pid)
    records = metrics(tmp_path)
    (run_path,) = offline_runs(tmp_path)
    rows = history(run_path)
    # the kill may fall between the file's line and the pipe's: at most the last record is missing
    assert len(records) - 1 <= len(rows) <= len(records) and len(rows) > 30
    for row, record in zip(rows, records):
        assert {k: v for k, v in row.items() if not k.startswith("_")} == record
    assert json.loads(leet(run_path, "--summary"))["state"] in ("failed", "crashed")


def run_in(terminal: bool, run_dir):
    cmd = [sys.executable, "-m", "launcher", "run", "configs/cpu_test.yaml", f"run.dir={run_dir}",
           "wandb.mode=disabled", "train.epochs=2", "run.progress=true"]
    if not terminal:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
        return proc.returncode, proc.stdout + proc.stderr
    leader, follower = pty.openpty()
    proc = subprocess.Popen(cmd, stdin=follower, stdout=follower, stderr=follower, cwd=REPO, close_fds=True)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    return proc.wait(timeout=120), b"".join(chunks).decode(errors="replace")


def test_progress_bar_on_a_terminal_and_plain_lines_otherwise(tmp_path):
    code, text = run_in(True, tmp_path / "tty")
    assert code == 0 and "step/s" in text and "[epoch]" in text
    code, text = run_in(False, tmp_path / "pipe")
    assert code == 0 and "step/s" not in text and text.count("[epoch]") == 2


def test_report_draws_the_curves_of_several_runs(tmp_path):
    for name, lr in (("a", "0.01"), ("b", "0.05")):
        assert run(load_config(None, [*SMALL_WANDB, f"run.dir={tmp_path / name}", f"optim.lr={lr}",
                                      "wandb.mode=disabled", "schedule.name=cosine"]), DistEnv()) == 0
    out = tmp_path / "cmp.png"
    proc = subprocess.run([sys.executable, "-m", "launcher", "report", str(tmp_path / "a"), str(tmp_path / "b"),
                           "--out", str(out)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    pixels = matplotlib.image.imread(out)[..., :3]
    assert (pixels < 0.9).any(axis=2).mean() > 0.01  # not blank

    def has(rgb):  # matplotlib's first two line colours: one per run
        return (np.abs(pixels - np.array(rgb) / 255).max(axis=2) < 0.05).sum() > 50
    assert has((31, 119, 180)) and has((255, 127, 14))
    missing = subprocess.run([sys.executable, "-m", "launcher", "report", str(tmp_path / "nope")],
                             capture_output=True, text=True, timeout=60, cwd=REPO)
    assert missing.returncode == 2 and "has no metrics.jsonl" in missing.stderr
