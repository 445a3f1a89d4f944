"""The sweep's results: a table best first (printed, and written as
results.csv and results.json in the sweep directory) and the best trial's
config as a ready-to-run YAML (best.yaml)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from dist_train.atomic import write_atomic
from dist_train.config import dump_yaml, load_config, replace
from launcher.tools.sweep.spec import SweepSpec
from launcher.tools.sweep.trials import TrialRecord, trial_dir

_STATUS_ORDER = {"finished": 0, "stopped": 1, "running": 1, "pending": 1, "failed": 2}


def ranked(records: list[TrialRecord], mode: str) -> list[TrialRecord]:
    """Finished trials best first, then the ones still to finish, then failed ones."""
    def key(r: TrialRecord) -> tuple:
        scored = r.status == "finished" and r.best is not None
        value = (-r.best if mode == "max" else r.best) if scored else math.inf
        return (_STATUS_ORDER.get(r.status, 1), not scored, value, r.index)
    return sorted(records, key=key)


def table(spec: SweepSpec, records: list[TrialRecord]) -> tuple[list[str], list[list[str]]]:
    keys = [p.key for p in spec.space]
    header = ["rank", "trial", "status", *keys, f"best {spec.settings.metric}", "epochs", "time_s"]
    rows = []
    for rank, r in enumerate(ranked(records, spec.mode), 1):
        status = r.status + (" (early stop)" if r.early_stopped and r.status == "finished" else "")
        rows.append([str(rank), r.name, status, *(fmt_value(r.params.get(k)) for k in keys),
                     fmt_value(r.best) if r.best is not None else "-", str(r.epochs), f"{r.seconds:.1f}"])
    return header, rows


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def write_results(spec: SweepSpec, records: list[TrialRecord]) -> str:
    """results.csv and results.json in the sweep directory; returns the printed table."""
    header, rows = table(spec, records)
    order = ranked(records, spec.mode)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    for row, r in zip(rows, order):  # full precision in the file, 4 digits on screen
        full = [_plain(r.params.get(p.key)) for p in spec.space]
        writer.writerow([*row[:3], *full, "" if r.best is None else repr(r.best), *row[-2:]])
    out = spec.out_dir
    write_atomic(out / "results.csv", buffer.getvalue())
    best = order[0] if order and order[0].status == "finished" and order[0].best is not None else None
    summary: dict[str, Any] = {
        "sweep": spec.name, "method": spec.settings.method, "metric": spec.settings.metric, "mode": spec.mode,
        "best_trial": best.name if best else None,
        "trials": [{"rank": i, "trial": r.name, "run_dir": str(trial_dir(out, r.index)), "status": r.status,
                    "params": r.params, "best": r.best, "epochs": r.epochs, "early_stopped": r.early_stopped,
                    "seconds": round(r.seconds, 3), "exit_code": r.exit_code, "error": r.error,
                    "test_accuracy": r.test_accuracy, "test": r.test} for i, r in enumerate(order, 1)]}
    write_atomic(out / "results.json", json.dumps(summary, indent=1, allow_nan=True) + "\n")
    return format_table(header, rows)


def write_best_config(spec: SweepSpec, records: list[TrialRecord]) -> Path | None:
    """best.yaml: the best finished trial's config, with its own run directory."""
    order = ranked(records, spec.mode)
    if not order or order[0].status != "finished" or order[0].best is None:
        return None
    best = order[0]
    cfg = load_config(trial_dir(spec.out_dir, best.index) / "trial.yaml")
    cfg = replace(cfg, **{"run.dir": str(spec.out_dir / "best"), "wandb.name": f"{spec.name}-best",
                            "run.progress": spec.base.run.progress})
    params = ", ".join(f"{k}={fmt_value(v)}" for k, v in best.params.items())
    header = (f"# The best trial of sweep {spec.name!r} by {spec.settings.metric} ({spec.mode}): {best.name}, "
              f"{spec.settings.metric}={best.best:.6g}\n# with {params}\n"
              f"#   dist-train launch --nproc-per-node {spec.settings.workers_per_trial} {spec.out_dir / 'best.yaml'}\n")
    path = spec.out_dir / "best.yaml"
    write_atomic(path, header + dump_yaml(cfg))
    return path


def fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt_value(v) for v in value) + "]"
    return str(value)


def _plain(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)
