"""`dist-train evaluate --out DIR`: the confusion matrix as a CSV table and a PNG."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any


def confusion_csv(metrics: dict[str, Any]) -> str:
    """Rows: the true class; columns: the predicted class; cells: samples."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    names = metrics["class_names"]
    writer.writerow(["true \\ predicted", *names])
    for name, row in zip(names, metrics["confusion_matrix"]):
        writer.writerow([name, *row])
    return buffer.getvalue()


def draw_confusion(metrics: dict[str, Any], out: Path, title: str = "") -> Path:
    """The matrix as a heat map, each row normalized by its class's samples
    (so classes of different sizes compare), with the counts written in."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from dist_train.atomic import atomic_file

    names = metrics["class_names"]
    counts = np.array(metrics["confusion_matrix"], dtype=np.int64)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    size = max(4.0, 0.55 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{title}\naccuracy {metrics['accuracy']:.4f} ({metrics['count']} samples)", fontsize=10)
    if len(names) <= 30:
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    with atomic_file(Path(out), "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)
    return Path(out)
