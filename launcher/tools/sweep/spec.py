"""The sweep file: a base run config, the search space and how to search it.

    name: digits-mlp              # W&B group of every trial (default: the file's name)
    base: configs/quickstart.yaml # a run config (relative: from the current directory); or the config inline
    overrides: [train.epochs=20]  # applied to the base, as on the command line
    method: random                # random | grid | tpe (optuna)
    seed: 0
    space: {optim.lr: {log_uniform: [1.0e-4, 1.0e-1]}}
    budget: {max_trials: 8, max_minutes: 30}
    parallel_trials: 1
    workers_per_trial: 1
    metric: val_accuracy          # val_accuracy | val_loss (| val_mse, val_mae, val_r2), best epoch of each trial
    mode: auto                    # auto | min | max
    out_dir: runs/sweeps/digits-mlp

Command-line `key=value` overrides go to the sweep when the first part of the
key is a sweep setting (budget.max_trials=4, out_dir=...) and to the base run
config otherwise (train.epochs=2)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from dist_train.monitor import metric_mode
from dist_train.config import Config, build_section, config_from_dict, load_config, read_yaml_mapping, Monitored
from dist_train.errors import ConfigError, DistTrainError, taken_from
from launcher.tools.sweep.space import Param, parse_space


@dataclass(frozen=True)
class Budget:
    max_trials: Optional[int] = None  # grid: at most the grid's size
    max_minutes: Optional[float] = None  # wall clock of one `dist-train sweep` command


@dataclass(frozen=True)
class SweepSettings:
    """The typed part of the sweep file (base, overrides and space are read apart)."""
    name: str = ""
    method: Literal["random", "grid", "tpe"] = "random"
    seed: int = 0
    budget: Budget = field(default_factory=Budget)
    parallel_trials: int = 1
    workers_per_trial: int = 1
    metric: Monitored = "val_accuracy"  # val_mse, val_mae or val_r2 for a regression
    mode: Literal["auto", "min", "max"] = "auto"
    out_dir: str = ""


UNTYPED = ("base", "overrides", "space")
SWEEP_KEYS = (*UNTYPED, *(f.name for f in dataclasses.fields(SweepSettings)))
CONFIG_SECTIONS = tuple(f.name for f in dataclasses.fields(Config))


@dataclass(frozen=True)
class SweepSpec:
    settings: SweepSettings
    base: Config  # the base run config with the sweep's overrides applied
    space: tuple[Param, ...]
    path: Path  # the sweep file
    raw: dict[str, Any]  # the file after command-line overrides, as written to the sweep directory

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def out_dir(self) -> Path:
        return Path(self.settings.out_dir)

    @property
    def mode(self) -> str:
        return metric_mode(self.settings.metric, self.settings.mode)


def load_sweep(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SweepSpec:
    path = Path(path)
    raw = read_yaml_mapping(path, "a sweep (base:, space:, ...)", "configs/sweep_digits.yaml")
    try:
        return _parse(path, _apply_cli_overrides(raw, overrides))
    except ConfigError as exc:
        raise DistTrainError(f"sweep file {str(path)!r}: {exc}") from None


def _apply_cli_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    raw = dict(raw)
    run_overrides = list(raw.get("overrides") or [])
    for item in overrides:
        if "=" not in item:
            raise ConfigError(item, "an override must look like key=value", "e.g. budget.max_trials=4 or train.epochs=5")
        key, text = item.split("=", 1)
        head = key.strip().split(".")[0]
        if head in CONFIG_SECTIONS:
            run_overrides.append(item)
        elif head in SWEEP_KEYS and head not in UNTYPED:
            value = yaml.safe_load(text) if text.strip() else ""
            node = raw
            parts = key.strip().split(".")
            for part in parts[:-1]:
                node[part] = dict(node.get(part) or {})
                node = node[part]
            node[parts[-1]] = value
        else:
            raise ConfigError(key, "is neither a sweep setting nor a run-config section",
                              f"sweep settings: {', '.join(k for k in SWEEP_KEYS if k not in UNTYPED)}; "
                              f"run-config sections: {', '.join(CONFIG_SECTIONS)}")
    if run_overrides:
        raw["overrides"] = run_overrides
    return raw


def _parse(path: Path, raw: dict[str, Any]) -> SweepSpec:
    if "base" not in raw:
        raise ConfigError("base", "is missing", "the run config every trial starts from, e.g. base: quickstart.yaml")
    if "space" not in raw:
        raise ConfigError("space", "is missing", "e.g. space: {optim.lr: {log_uniform: [1.0e-4, 1.0e-1]}}")
    settings = build_section(SweepSettings, {k: v for k, v in raw.items() if k not in UNTYPED})
    name = settings.name or path.stem
    settings = dataclasses.replace(settings, name=name, out_dir=settings.out_dir or f"runs/sweeps/{name}")
    overrides = raw.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise ConfigError("overrides", f"must be a list of key=value strings, got {overrides!r}",
                          "e.g. overrides: [train.epochs=20, early_stopping.enabled=true]")
    base = _load_base(path, raw["base"], overrides)
    space = parse_space(raw["space"])
    _check_settings(settings, space)
    return SweepSpec(settings, base, space, path, raw)


def _load_base(path: Path, base: Any, overrides: list[str]) -> Config:
    if isinstance(base, dict):
        return config_from_dict(base, overrides)
    if not isinstance(base, str) or not base:
        raise ConfigError("base", f"must be a run config's path or the config itself, got {base!r}")
    base_path = Path(base)  # relative: from the current directory, as every path in a config
    if not base_path.is_file():
        beside = path.parent / base
        hint = (f"the sweep file's directory has one: write base: {os.path.relpath(beside)}" if beside.is_file()
                else "a run config, e.g. base: configs/quickstart.yaml")
        raise ConfigError("base", f"{base!r} is not a file{taken_from(base)}", hint)
    return load_config(base_path, overrides)


def _check_settings(s: SweepSettings, space: tuple[Param, ...]) -> None:
    b = s.budget
    if b.max_trials is not None and b.max_trials < 1:
        raise ConfigError("budget.max_trials", f"{b.max_trials!r} must be at least 1")
    if b.max_minutes is not None and not b.max_minutes > 0:
        raise ConfigError("budget.max_minutes", f"{b.max_minutes!r} must be greater than 0")
    if s.method != "grid" and b.max_trials is None and b.max_minutes is None:
        raise ConfigError("budget", f"a {s.method} search needs an end", "set budget.max_trials and/or budget.max_minutes")
    if s.parallel_trials < 1:
        raise ConfigError("parallel_trials", f"{s.parallel_trials!r} must be at least 1")
    if s.workers_per_trial < 1:
        raise ConfigError("workers_per_trial", f"{s.workers_per_trial!r} must be at least 1")
    if s.method == "grid":
        for p in space:
            p.grid()  # raises, naming the key, for a continuous range without num
    for p in space:
        if p.key.split(".")[0] not in CONFIG_SECTIONS:
            raise ConfigError(f"space.{p.key}", "is not a run-config key",
                              f"keys start with a section: {', '.join(CONFIG_SECTIONS)}")
        if p.key in ("run.dir", "wandb.group", "wandb.name"):
            raise ConfigError(f"space.{p.key}", "is set by the sweep for each trial and cannot be searched")
