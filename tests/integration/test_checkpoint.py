"""Checkpoints of real runs, in this process and over 2 gloo workers:
plain-torch loading, the run directory's contents and retention, a finished
run not trained again, corrupt and partial checkpoints skipped, every rank on
the same checkpoint."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from dist_train.checkpoint import MANIFEST, find_latest_valid, list_checkpoints, verify_checkpoint
from dist_train.errors import DistTrainError
from tests.helpers import small_run
from tests.multiproc import run_workers


def test_model_weights_load_with_plain_torch_without_dist_train(tmp_path):
    assert small_run(tmp_path) == 0
    path = find_latest_valid(tmp_path).path
    code = textwrap.dedent(f"""
        import sys, torch
        state = torch.load({str(path / 'model.pt')!r}, weights_only=True)
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        net.load_state_dict({{k.removeprefix("net."): v for k, v in state.items()}}, strict=True)
        assert "dist_train" not in sys.modules
        print("loaded", sum(p.numel() for p in net.parameters()))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert "loaded 99" in proc.stdout
    for name in ("trainer.pt", "rank-00000.pt"):  # the rest loads without unpickling too
        assert torch.load(path / name, weights_only=True) is not None


def test_run_directory_holds_config_metrics_and_retained_checkpoints(tmp_path):
    assert small_run(tmp_path) == 0
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "metrics.jsonl").is_file()
    steps = [int(p.name.split("-")[1]) for p in list_checkpoints(tmp_path)]
    # 21 steps, every 4 and at epoch ends (7, 14) and the end (21): the last 2, plus the best by val_loss
    manifest = json.loads((tmp_path / "checkpoints" / f"step-{steps[0]:08d}" / MANIFEST).read_text())
    assert steps[:2] == [21, 20] and manifest["finished"] is True
    assert len(steps) <= 3
    best = [e for e in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if e["event"] == "epoch"]
    best_step = min(best, key=lambda e: e["val_loss"])["step"]
    assert best_step in steps


def test_finished_run_is_not_trained_again_and_fresh_keeps_the_old_run(tmp_path):
    run_dir = tmp_path / "r"
    assert small_run(run_dir) == 0
    lines = (run_dir / "metrics.jsonl").read_text()
    assert small_run(run_dir) == 0
    assert (run_dir / "metrics.jsonl").read_text() == lines  # nothing appended
    assert small_run(run_dir, "run.resume=never") == 0
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("r.previous-")]
    assert len(moved) == 1 and (moved[0] / "metrics.jsonl").read_text() == lines


def damage(path: Path, how: str) -> None:
    target = path / "model.pt"
    if how == "truncated":
        target.write_bytes(target.read_bytes()[:100])
    elif how == "corrupt":
        data = bytearray(target.read_bytes())
        data[200:260] = bytes(60)
        target.write_bytes(bytes(data))
    elif how == "no_manifest":
        (path / MANIFEST).unlink()
    elif how == "missing_file":
        (path / "trainer.pt").unlink()


@pytest.mark.parametrize("how, words", [("truncated", "(truncated)"), ("corrupt", "does not match its SHA-256"),
                                        ("no_manifest", "its save did not finish"), ("missing_file", "trainer.pt is missing")])
def test_a_bad_newest_checkpoint_is_reported_and_skipped(tmp_path, capsys, how, words):
    assert small_run(tmp_path, "train.max_steps=10", "checkpoint.keep_last=5") == 0
    newest, previous = list_checkpoints(tmp_path)[:2]
    damage(newest, how)
    with pytest.raises(DistTrainError, match=words.replace("(", r"\(").replace(")", r"\)")):
        verify_checkpoint(newest)
    messages = []
    assert find_latest_valid(tmp_path, warn=messages.append).path == previous
    assert len(messages) == 1 and str(newest) in messages[0] and words in messages[0]
    # and a run resumes from the previous one (the damaged one is not "finished")
    capsys.readouterr()
    assert small_run(tmp_path, "train.max_steps=12", "checkpoint.keep_last=5") == 0
    assert f"resuming from {previous}" in capsys.readouterr().out


def resume_worker(env, run_dir):
    status = small_run(run_dir, "train.max_steps=14", "checkpoint.keep_last=5", env=env)
    events = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return status, [e for e in events if e["event"] == "resume"][-1]["step"]


def test_every_rank_resumes_from_the_same_checkpoint(tmp_path):
    run_workers(_first_part, 2, str(tmp_path), timeout_s=120)
    newest, previous = list_checkpoints(tmp_path)[:2]
    damage(newest, "corrupt")
    (s0, step0), (s1, step1) = run_workers(resume_worker, 2, str(tmp_path), timeout_s=120)
    assert s0 == s1 == 0
    assert step0 == step1 == int(previous.name.split("-")[1])


def _first_part(env, run_dir):
    return small_run(run_dir, "train.max_steps=10", "checkpoint.keep_last=5", env=env)
