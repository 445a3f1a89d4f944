"""One trial of a sweep is an ordinary run: its own run directory under the
sweep directory (`trial-0003/`), holding the config it was launched with
(`trial.yaml`), what the sweep knows about it (`trial.json`), its console
output (`trial.log`), and everything a run writes (config.yaml, metrics.jsonl,
checkpoints, W&B). Its result is read back from metrics.jsonl."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from dist_train.atomic import write_atomic
from dist_train.monitor import Monitor
from dist_train.config import Config, dump_yaml, replace, to_dict
from dist_train.errors import DistTrainError
from launcher.tools.report import read_records

# pending: planned; running: started (or the sweep died while it ran); finished:
# exit 0; stopped: saved a checkpoint on request (exit 75), resumes on the next
# sweep; failed: anything else, recorded and not retried unless asked
STATUSES = ("pending", "running", "finished", "stopped", "failed")


@dataclass
class TrialRecord:
    index: int
    params: dict[str, Any]
    status: str = "pending"
    seconds: float = 0.0  # wall time over all the sweep commands that ran it
    exit_code: int | None = None
    error: str | None = None
    best: float | None = None  # the sweep's metric at the trial's best epoch
    epochs: int = 0
    early_stopped: bool = False
    test_accuracy: float | None = None  # classification only; `test` holds every test metric
    test: dict[str, float] | None = None  # the last test record's test_* values (loss, accuracy or MSE, MAE, R^2)

    @property
    def name(self) -> str:
        return trial_name(self.index)


def trial_name(index: int) -> str:
    return f"trial-{index:04d}"


def trial_dir(out_dir: Path, index: int) -> Path:
    return Path(out_dir) / trial_name(index)


def write_record(out_dir: Path, record: TrialRecord) -> None:
    path = trial_dir(out_dir, record.index)
    path.mkdir(parents=True, exist_ok=True)
    write_atomic(path / "trial.json", json.dumps(asdict(record), indent=1, allow_nan=True) + "\n")


def read_records_of_sweep(out_dir: Path) -> dict[int, TrialRecord]:
    found = {}
    for path in sorted(Path(out_dir).glob("trial-*/trial.json")):
        try:
            data = json.loads(path.read_text())
            record = TrialRecord(**data)
        except (ValueError, TypeError) as exc:
            raise DistTrainError(f"{path} is damaged ({exc}); move that trial directory away to run it again") from None
        found[record.index] = record
    return found


def trial_config(base: Config, sweep_name: str, out_dir: Path, index: int, params: dict[str, Any]) -> Config:
    """The base config with the trial's parameters, its own run directory and its
    W&B run grouped under the sweep. Raises ConfigError for values the config rejects."""
    return replace(base, **params, **{"run.dir": str(trial_dir(out_dir, index)), "wandb.group": sweep_name,
                                      "wandb.name": f"{sweep_name}-{trial_name(index)}", "run.progress": False,
                                      "run.resume": "auto"})  # an interrupted trial continues


def write_trial_config(out_dir: Path, index: int, cfg: Config) -> Path:
    """Write trial.yaml, or check that the one already there is the same: a
    different one means the sweep file changed since that trial ran."""
    path = trial_dir(out_dir, index) / "trial.yaml"
    text = dump_yaml(cfg)
    if path.exists():
        if path.read_text() != text:
            was = _flat(yaml.safe_load(path.read_text()) or {})
            now = _flat(to_dict(cfg))
            changed = sorted(k for k in was.keys() | now.keys() if was.get(k) != now.get(k))
            detail = ", ".join(f"{k}: {was.get(k)!r} then, {now.get(k)!r} now" for k in changed[:3])
            raise DistTrainError(
                f"{path} differs from what the sweep file gives for this trial now ({detail}). Resume with the "
                f"sweep file as it was, or choose a new out_dir for the new sweep")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text)
    return path


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def read_outcome(run_dir: Path, metric: str, mode: str) -> dict[str, Any]:
    """The best value of `metric` over the run's epochs, the number of epochs,
    whether it stopped early and its test metrics, from metrics.jsonl."""
    try:
        records = read_records(run_dir)
    except DistTrainError:  # never started, or the file is unreadable: no result
        return {"best": None, "epochs": 0, "early_stopped": False, "test_accuracy": None, "test": None}
    best = None
    epochs = 0
    for r in records:
        if r.get("event") == "epoch":
            epochs += 1
            value = r.get(metric)
            if isinstance(value, (int, float)) and math.isfinite(value) and Monitor(metric, mode).improves(value, best):
                best = float(value)
    tests = [r for r in records if r.get("event") == "test"]
    test = {k: v for k, v in tests[-1].items() if k.startswith("test_")} if tests else None
    return {"best": best, "epochs": epochs, "early_stopped": any(r.get("event") == "early_stop" for r in records),
            "test_accuracy": test.get("test_accuracy") if test else None, "test": test}


def failure_line(log_path: Path) -> str:
    """The line of a trial's output that says why it failed: the first error a
    worker printed, else the last line."""
    try:
        lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no output"
    for line in lines:
        if "dist-train: error:" in line:
            return line[line.index("dist-train: error:"):][:500]
    return lines[-1][:500] if lines else "no output"
