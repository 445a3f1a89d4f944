"""Monitoring of runs in this process: the same W&B run after a resume (read
back with W&B's own reader), W&B failures that never stop training, no API key
on disk, only local metrics with W&B disabled, and a progress bar that counts
every step."""

import json

from dist_train.config import load_config
from dist_train.env import DistEnv
from dist_train.run import run
from tests.helpers import SMALL_WANDB, history, leet, metrics, offline_runs


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path):
    from tests.helpers import sigterm_at

    assert run(load_config(None, [*SMALL_WANDB, f"run.dir={tmp_path}", "checkpoint.every_steps=4"]), DistEnv(),
               sigterm_at(10)) == 75
    first_lines = len(metrics(tmp_path))
    assert run(load_config(None, [*SMALL_WANDB, f"run.dir={tmp_path}", "checkpoint.every_steps=4"]), DistEnv()) == 0
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
    assert run(load_config(None, [*SMALL_WANDB, f"run.dir={tmp_path}"]), DistEnv()) == 0
    err = capfd.readouterr().err  # the W&B writer process shares the job's stderr
    assert err.count("W&B could not start") == 1 and "training goes on with local logging" in err
    assert any(r["event"] == "test" for r in metrics(tmp_path))


def test_the_api_key_is_never_written_or_printed(tmp_path, monkeypatch, capfd):
    key = "0123456789abcdef0123456789abcdef01234567"  # not a real key
    monkeypatch.setenv("WANDB_API_KEY", key)
    assert run(load_config(None, [*SMALL_WANDB, f"run.dir={tmp_path}"]), DistEnv()) == 0
    out = capfd.readouterr()
    assert key not in out.out and key not in out.err
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path


def test_disabled_wandb_writes_only_local_metrics(tmp_path):
    assert run(load_config(None, [*SMALL_WANDB, f"run.dir={tmp_path}", "wandb.mode=disabled"]), DistEnv()) == 0
    assert not (tmp_path / "wandb").exists() and metrics(tmp_path)


def test_the_progress_bar_moves_every_step_even_when_no_record_is_written(tmp_path):
    """With a constant LR no `lr` record is written per step: the bar must still
    count every optimizer step of the epoch (drawn into a buffer here)."""
    import io

    from dist_train.tracking import Progress, Tracker
    from tests.helpers import build_trainer

    cfg = load_config(None, [*SMALL_WANDB, "wandb.mode=disabled", "train.log_every_steps=1000"])
    tracker = Tracker(tmp_path, console=io.StringIO(), progress=True)
    drawn = io.StringIO()
    tracker.progress = Progress(drawn)
    trainer = build_trainer(cfg, DistEnv(), tracker=tracker)
    trainer.train_epoch()
    assert tracker.progress.steps == trainer.data.train.steps_per_epoch == 7
    assert "step" in drawn.getvalue()  # and the bar was drawn
    assert [json.loads(line)["event"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == ["lr"]


def test_report_names_each_run_and_curve_once_in_its_legends(tmp_path):
    """Two runs whose directories share a name (`a/run`, `b/run`), the first
    trained on after it finished (more epochs: a second test record): each
    legend entry once, and each run told apart."""
    import matplotlib.pyplot as plt

    from launcher.tools.report import report_figure

    base = [*SMALL_WANDB, "wandb.mode=disabled", "run.progress=false"]
    a, b = tmp_path / "a" / "run", tmp_path / "b" / "run"
    assert run(load_config(None, [*base, f"run.dir={a}"]), DistEnv()) == 0
    assert run(load_config(None, [*base, f"run.dir={a}", "train.epochs=4"]), DistEnv()) == 0
    assert run(load_config(None, [*base, f"run.dir={b}"]), DistEnv()) == 0
    assert [r["event"] for r in metrics(a)].count("test") == 2
    fig = report_figure([a, b])
    try:
        legends = {ax.get_title(): [t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes}
    finally:
        plt.close(fig)
    assert legends == {"loss": ["a/run train", "a/run validation", "b/run train", "b/run validation"],
                       "accuracy": ["a/run validation", "a/run test", "b/run validation", "b/run test"],
                       "learning rate": ["a/run", "b/run"]}
