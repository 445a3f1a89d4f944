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


def test_config_yaml_holds_what_the_run_uses_and_runs_again_as_the_same_run_with_the_umasks_modes(tmp_path, capsys):
    """config.yaml leaves out what the run never reads (the built-in mlp's keys
    beside a model of one's own, a gamma the cosine schedule never reads) and
    how the command started (--fresh's run.resume); loaded again it is the same
    run, and `run RUN_DIR/config.yaml` resumes a stopped run with no change
    reported (the left-out gamma, back at its default, is not compared).
    The checkpoints' manifests keep the whole config. config.yaml and the
    exported bundle and .pt2 get the mode the umask gives (0644 under 022)."""
    import os
    import stat

    import yaml

    import dist_train
    from dist_train.config import load_config, relevant_dict, to_dict
    from dist_train.env import DistEnv
    from dist_train.run import run
    from tests.helpers import SMALL_RUN, metrics, sigterm_at

    run_dir = tmp_path / "run"
    base = [o for o in SMALL_RUN if not o.startswith("model.")]
    cfg = load_config(None, [*base, f"run.dir={run_dir}", "model.class_path=tests.user_project.nets.SmallBNNet",
                             "model.init_args={width: 8}", "schedule.name=cosine", "schedule.gamma=0.5",
                             "run.resume=never", "wandb.mode=disabled", "run.progress=false",
                             "train.stop_check_every_steps=1"])
    umask = os.umask(0o022)
    try:
        assert run(cfg, DistEnv(), sigterm_at(10)) == 75
        written = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert written["model"] == {"class_path": "tests.user_project.nets.SmallBNNet", "init_args": {"width": 8},
                                    "sync_batchnorm": False}
        assert "gamma" not in written["schedule"] and "momentum" not in written["optim"]
        assert "num_samples" in written["data"]
        assert "resume" not in written["run"] and written["run"]["dir"] == str(run_dir)
        assert find_latest_valid(run_dir).manifest["config"] == to_dict(cfg)  # whole: what a resume compares
        again = load_config(run_dir / "config.yaml")
        expected = relevant_dict(cfg)
        expected["run"]["resume"] = "auto"  # a run started again from config.yaml resumes
        assert relevant_dict(again) == expected
        assert stat.S_IMODE((run_dir / "config.yaml").stat().st_mode) == 0o644
        capsys.readouterr()
        assert run(again, DistEnv()) == 0
        out = capsys.readouterr().out
        assert "dist-train: resuming from" in out and "changed settings" not in out and "no effect" not in out, out
        assert "changed" not in [r for r in metrics(run_dir) if r["event"] == "resume"][-1]
        exported = dist_train.export(run_dir, tmp_path / "out" / "model.pt", say=lambda line: None)
        assert exported.program is not None, exported.program_error
        for path in (run_dir / "config.yaml", exported.bundle, exported.program):
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    finally:
        os.umask(umask)
