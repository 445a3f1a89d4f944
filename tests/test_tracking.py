"""Monitoring: one W&B run per job read back with W&B's own reader, the same
run after a resume, W&B failures that never stop training, no API key on
disk, a progress bar on a terminal, and `dist-train report`."""

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from dist_train.config import load_config
from dist_train.env import DistEnv
from dist_train.resolve import resolve
from dist_train.run import run
from tests.conftest import REPO

SMALL = ["data.source=synthetic", "data.num_samples=300", "data.num_features=8", "data.num_classes=3",
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


def without_empty(tree):
    return {k: without_empty(v) if isinstance(v, dict) else v for k, v in tree.items() if v != {}}


def offline_runs(run_dir):
    return sorted((Path(run_dir) / "wandb").glob("offline-run-*"))


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


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path):
    from tests.test_resume import sigterm_at

    assert run(load_config(None, [*SMALL, f"run.dir={tmp_path}", "checkpoint.every_steps=4"]), DistEnv(),
               sigterm_at(10)) == 75
    first_lines = len(metrics(tmp_path))
    assert run(load_config(None, [*SMALL, f"run.dir={tmp_path}", "checkpoint.every_steps=4"]), DistEnv()) == 0
    first, second = offline_runs(tmp_path)
    ids = {json.loads(leet(p, "--summary"))["run_id"] for p in (first, second)}
    assert len(ids) == 1  # one run id for the whole job
    before, after = history(first), history(second)
    resume_line = next(i for i, r in enumerate(metrics(tmp_path)) if r["event"] == "resume")
    assert len(before) == first_lines
    assert after[0]["_step"] == resume_line > 0  # steps go on, not from 0
    assert after[-1]["_step"] == len(metrics(tmp_path)) - 1


def test_wandb_failing_to_start_warns_once_and_training_completes(tmp_path, capfd):
    (tmp_path / "wandb").write_text("a file where W&B wants its directory")
    assert run(load_config(None, [*SMALL, f"run.dir={tmp_path}"]), DistEnv()) == 0
    err = capfd.readouterr().err  # the W&B writer process shares the job's stderr
    assert err.count("W&B could not start") == 1 and "training goes on with local logging" in err
    assert any(r["event"] == "test" for r in metrics(tmp_path))


def test_a_stuck_wandb_never_blocks_training_and_its_end_is_bounded(tmp_path, monkeypatch, capfd):
    """W&B's process stops reading (here: a real process that never reads its
    input stands in for a W&B client stuck on a network that does not answer).
    Rows keep coming far past a pipe's 64 KiB; no call waits for it, and the end
    of the run stops it after FINISH_TIMEOUT_S with a warning."""
    import time

    from dist_train.tracking import WandbSink

    monkeypatch.setattr(WandbSink, "COMMAND", [sys.executable, "-c", "import time; time.sleep(120)"])
    monkeypatch.setattr(WandbSink, "FINISH_TIMEOUT_S", 2.0)
    sink = WandbSink(load_config(None, SMALL).wandb, tmp_path, {}, None)
    record = {"event": "lr", "time": 0.0, "step": 0, "lr": 0.1, "padding": "x" * 100}
    slowest = 0.0
    for index in range(5000):  # about 0.8 MB
        start = time.perf_counter()
        sink.log(record, index)
        slowest = max(slowest, time.perf_counter() - start)
    assert len(sink._pending) > 500_000  # the pipe took what it could; the rest waits here
    assert slowest < 5.0  # a blocking write would wait for the writer, 120 s; not a speed figure
    start = time.monotonic()
    sink.finish()
    assert time.monotonic() - start < 10
    err = capfd.readouterr().err
    assert err.count("W&B did not finish within 2s") == 1


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


def test_the_api_key_is_never_written_or_printed(tmp_path, monkeypatch, capfd):
    key = "0123456789abcdef0123456789abcdef01234567"  # not a real key
    monkeypatch.setenv("WANDB_API_KEY", key)
    assert run(load_config(None, [*SMALL, f"run.dir={tmp_path}"]), DistEnv()) == 0
    out = capfd.readouterr()
    assert key not in out.out and key not in out.err
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path


def test_disabled_wandb_writes_only_local_metrics(tmp_path):
    assert run(load_config(None, [*SMALL, f"run.dir={tmp_path}", "wandb.mode=disabled"]), DistEnv()) == 0
    assert not (tmp_path / "wandb").exists() and metrics(tmp_path)


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


def test_the_progress_bar_moves_every_step_even_when_no_record_is_written(tmp_path):
    """With a constant LR no `lr` record is written per step: the bar must still
    count every optimizer step of the epoch (drawn into a buffer here)."""
    import io

    from dist_train.tracking import Progress, Tracker
    from dist_train.trainer import Trainer

    cfg = load_config(None, [*SMALL, "wandb.mode=disabled", "train.log_every_steps=1000"])
    tracker = Tracker(tmp_path, console=io.StringIO(), progress=True)
    drawn = io.StringIO()
    tracker.progress = Progress(drawn)
    trainer = Trainer.build(cfg, DistEnv(), tracker=tracker)
    trainer.train_epoch()
    assert tracker.progress.steps == trainer.data.train.steps_per_epoch == 7
    assert "step" in drawn.getvalue()  # and the bar was drawn
    assert [json.loads(line)["event"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == ["lr"]


def test_report_draws_the_curves_of_several_runs(tmp_path):
    for name, lr in (("a", "0.01"), ("b", "0.05")):
        assert run(load_config(None, [*SMALL, f"run.dir={tmp_path / name}", f"optim.lr={lr}", "wandb.mode=disabled",
                                      "schedule.name=cosine"]), DistEnv()) == 0
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
