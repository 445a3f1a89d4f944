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


def run_labels(run_dirs: list[Path]) -> list[str]:
    """One legend name per run: the shortest tail of its path that tells it
    from the others (`a/run` and `b/run`, not `run` twice), numbered when the
    same directory is given twice."""
    paths = [Path(d).resolve() for d in run_dirs]
    longest = max(len(p.parts) for p in paths)
    for depth in range(1, longest + 1):
        labels = [str(Path(*p.parts[-depth:])) for p in paths]
        if len(set(labels)) == len(labels):
            return labels
    seen: dict[str, int] = {}
    numbered = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        numbered.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return numbered


def draw_report(run_dirs: list[Path], out: Path) -> Path:
    import matplotlib.pyplot as plt

    fig = report_figure(run_dirs)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def report_figure(run_dirs: list[Path]):  # -> matplotlib.figure.Figure
    """The three panels (loss, accuracy or R^2, learning rate), one colour and
    one legend entry per run and curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(15, 4.2))
    scores: set[str] = set()
    for index, (run_dir, label) in enumerate(zip(run_dirs, run_labels(run_dirs))):
        records = read_records(run_dir)
        color = f"C{index % 10}"
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
        # a run trained on after it finished (more epochs) has a test record per end: one legend entry for all
        tests = [r for r in records if r["event"] == "test" and f"test_{score}" in r]
        if tests:
            ax_acc.scatter([r["step"] for r in tests], [r[f"test_{score}"] for r in tests], color=color, marker="*",
                           s=120, label=f"{label} test")
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
    return fig
