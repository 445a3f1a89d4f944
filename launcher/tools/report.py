"""`dist-train report`: loss, accuracy and learning-rate curves from one or
more run directories' metrics.jsonl, drawn into one PNG."""

from __future__ import annotations

import json
from pathlib import Path

from dist_train.errors import DistTrainError


def read_records(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise DistTrainError(f"{run_dir} has no metrics.jsonl; pass a run directory (run.dir of a run)")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            records.append(json.loads(line))
        except ValueError:
            raise DistTrainError(f"{path}, line {number}, is not JSON; the file is damaged") from None
    return records


def draw_report(run_dirs: list[Path], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(15, 4.2))
    scores: set[str] = set()
    for index, run_dir in enumerate(run_dirs):
        records = read_records(run_dir)
        color = f"C{index % 10}"
        label = Path(run_dir).name
        train = [r for r in records if r["event"] == "train"]
        epochs = [r for r in records if r["event"] == "epoch"]
        lrs = [r for r in records if r["event"] == "lr"]
        if epochs:  # the epoch's mean training loss; the periodic records when there is no epoch yet
            ax_loss.plot([r["step"] for r in epochs], [r["train_loss"] for r in epochs], color=color, linestyle="--",
                         label=f"{label} train")
        elif train:
            ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], color=color, linestyle="--",
                         label=f"{label} train")
        # classification runs draw accuracy; regression runs R^2 (both: higher is better, up to 1)
        score = "accuracy" if not epochs or "val_accuracy" in epochs[0] else "r2"
        scores.add(score)
        if epochs:
            steps = [r["step"] for r in epochs]
            ax_loss.plot(steps, [r["val_loss"] for r in epochs], color=color, marker="o", label=f"{label} validation")
            ax_acc.plot(steps, [r[f"val_{score}"] for r in epochs], color=color, marker="o", label=f"{label} validation")
        for test in (r for r in records if r["event"] == "test" and f"test_{score}" in r):
            ax_acc.scatter([test["step"]], [test[f"test_{score}"]], color=color, marker="*", s=120, label=f"{label} test")
        if lrs:  # recorded where it changes: a step function, held to the last step of the run
            steps, values = [r["step"] for r in lrs], [r["lr"] for r in lrs]
            last_step = max(r.get("step", 0) for r in records)
            if last_step > steps[-1]:
                steps, values = steps + [last_step], values + [values[-1]]
            ax_lr.plot(steps, values, color=color, label=label, drawstyle="steps-post")
    score_name = " / ".join(sorted("R^2" if s == "r2" else s for s in scores)) or "accuracy"
    for ax, title, ylabel in ((ax_loss, "loss", "loss"), (ax_acc, score_name, score_name), (ax_lr, "learning rate", "lr")):
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
