"""The search space of a sweep: one distribution per dotted config key.

In the sweep file each key maps to exactly one of

    {choice: [v1, v2, ...]}              any YAML values (lists too: hidden sizes)
    {uniform: [low, high]}               a float in [low, high]
    {log_uniform: [low, high]}           a float whose logarithm is uniform (learning rates)
    {int: [low, high], step: 1}          an integer in [low, high], both included

`num: K` on uniform and log_uniform says how many evenly (log-evenly) spaced
points a grid search takes; random search ignores it."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from dist_train.errors import ConfigError

KINDS = ("choice", "uniform", "log_uniform", "int")


@dataclass(frozen=True)
class Param:
    key: str  # the dotted config key, e.g. optim.lr
    kind: str  # one of KINDS
    choices: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    step: int = 1  # int only
    num: int | None = None  # uniform/log_uniform: grid points

    def sample(self, rng: np.random.Generator) -> Any:
        if self.kind == "choice":
            return self.choices[int(rng.integers(len(self.choices)))]
        if self.kind == "uniform":
            return float(rng.uniform(self.low, self.high))
        if self.kind == "log_uniform":
            return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return int(self.low) + self.step * int(rng.integers((int(self.high) - int(self.low)) // self.step + 1))

    def grid(self) -> list[Any]:
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1, self.step))
        if self.num is None:
            raise ConfigError(f"space.{self.key}", f"a {self.kind} range has no finite grid",
                              f"add num: 4 (points from {self.low:g} to {self.high:g}) or use choice: [...]")
        if self.num == 1:
            return [float(self.low)]
        if self.kind == "uniform":
            return [float(v) for v in np.linspace(self.low, self.high, self.num)]
        return [float(v) for v in np.geomspace(self.low, self.high, self.num)]


def parse_space(raw: Any) -> tuple[Param, ...]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError("space", f"must be a non-empty mapping of config keys to distributions, got {raw!r}",
                          "e.g. space: {optim.lr: {log_uniform: [1.0e-4, 1.0e-1]}}")
    return tuple(_parse_param(str(key), spec) for key, spec in raw.items())


def _parse_param(key: str, spec: Any) -> Param:
    where = f"space.{key}"
    example = "{choice: [a, b]}, {uniform: [low, high]}, {log_uniform: [low, high]} or {int: [low, high]}"
    if not isinstance(spec, dict):
        raise ConfigError(where, f"must be a distribution, got {spec!r}", f"one of {example}")
    kinds = [k for k in spec if k in KINDS]
    if len(kinds) != 1:
        raise ConfigError(where, f"needs exactly one of {', '.join(KINDS)}, got {sorted(map(str, spec))}", f"one of {example}")
    kind = kinds[0]
    allowed = {"choice": set(), "uniform": {"num"}, "log_uniform": {"num"}, "int": {"step"}}[kind]
    extra = sorted(set(map(str, spec)) - {kind} - allowed)
    if extra:
        raise ConfigError(f"{where}.{extra[0]}", f"unknown key for a {kind} distribution",
                          f"allowed here: {', '.join([kind, *sorted(allowed)])}")
    value = spec[kind]
    if kind == "choice":
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{where}.choice", f"must be a non-empty list, got {value!r}")
        return Param(key, kind, choices=tuple(value))
    if not isinstance(value, list) or len(value) != 2 or not all(_is_number(v) for v in value):
        raise ConfigError(f"{where}.{kind}", f"must be [low, high], got {value!r}")
    low, high = (float(v) for v in value)
    if not low < high:
        raise ConfigError(f"{where}.{kind}", f"low {low:g} must be below high {high:g}")
    if kind == "log_uniform" and low <= 0:
        raise ConfigError(f"{where}.{kind}", f"low {low:g} must be greater than 0 for a log-uniform range")
    if kind == "int":
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{where}.int", f"bounds must be integers, got {value!r}")
        step = spec.get("step", 1)
        if not isinstance(step, int) or isinstance(step, bool) or step < 1 or (value[1] - value[0]) % step:
            raise ConfigError(f"{where}.step", f"{step!r} must be a positive integer that divides high - low")
        return Param(key, kind, low=low, high=high, step=step)
    num = spec.get("num")
    if num is not None and (not isinstance(num, int) or isinstance(num, bool) or num < 1):
        raise ConfigError(f"{where}.num", f"{num!r} must be a positive integer")
    return Param(key, kind, low=low, high=high, num=num)


def _is_number(value: Any) -> bool:
    if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as text
        try:
            float(value)
        except ValueError:
            return False
        return True
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def random_params(space: tuple[Param, ...], seed: int, trial: int) -> dict[str, Any]:
    """Trial `trial`'s draw: its own stream from (seed, trial), so it does not
    depend on how many trials ran before, in what order or in parallel."""
    rng = np.random.default_rng([seed, trial])
    return {p.key: p.sample(rng) for p in space}


def grid_params(space: tuple[Param, ...]) -> list[dict[str, Any]]:
    """Every combination, the last key varying fastest (the file's order)."""
    values = [p.grid() for p in space]
    return [dict(zip((p.key for p in space), combo)) for combo in itertools.product(*values)]
