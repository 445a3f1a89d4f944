"""How a sweep picks each trial's parameters: random, grid, or optuna's TPE
(model-based; `pip install 'dist-train[sweep]'`). Random and grid are pure
functions of the trial number, so a resumed sweep proposes exactly what the
interrupted one would have; TPE learns from every trial that has ended,
including those of earlier sweep commands (read back from their records)."""

from __future__ import annotations

from typing import Any

import numpy as np

from dist_train.errors import DistTrainError
from launcher.tools.sweep.space import Param, grid_params, random_params
from launcher.tools.sweep.spec import SweepSpec
from launcher.tools.sweep.trials import TrialRecord


class RandomSearch:
    def __init__(self, spec: SweepSpec) -> None:
        self.space, self.seed = spec.space, spec.settings.seed
        self.planned: int | None = spec.settings.budget.max_trials  # None: until the time budget ends

    def params(self, index: int, record: TrialRecord | None) -> dict[str, Any]:
        return random_params(self.space, self.seed, index)

    def observe(self, record: TrialRecord) -> None:
        pass


class GridSearch:
    def __init__(self, spec: SweepSpec) -> None:
        self.points = grid_params(spec.space)
        limit = spec.settings.budget.max_trials
        self.planned: int | None = len(self.points) if limit is None else min(limit, len(self.points))

    def params(self, index: int, record: TrialRecord | None) -> dict[str, Any]:
        return dict(self.points[index])

    def observe(self, record: TrialRecord) -> None:
        pass


class TPESearch:
    """optuna's ask-and-tell interface: `ask` for a new trial's parameters, `tell`
    its best metric (or that it failed). Trials of earlier sweep commands are
    added to the study from their records. Choices travel as indices (optuna
    takes only scalars as categories; our choices may be lists)."""

    def __init__(self, spec: SweepSpec, records: dict[int, TrialRecord]) -> None:
        try:
            import optuna
        except ImportError:
            raise DistTrainError("method: tpe needs optuna, which is not installed: pip install 'dist-train[sweep]' "
                                 "(or pip install optuna), or use method: random") from None
        self.optuna = optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.space = spec.space
        self.planned: int | None = spec.settings.budget.max_trials
        self.distributions = {p.key: _distribution(optuna, p) for p in self.space}
        # A resumed sweep starts a new study from the records; seeding it with the
        # seed alone would make it draw the first command's startup trials again.
        seed = int(np.random.SeedSequence([spec.settings.seed, len(records)]).generate_state(1)[0])
        sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=spec.settings.parallel_trials > 1)
        self.study = optuna.create_study(direction="maximize" if spec.mode == "max" else "minimize", sampler=sampler)
        self.asked: dict[int, Any] = {}
        for record in sorted(records.values(), key=lambda r: r.index):
            if record.status in ("finished", "failed"):
                self.observe(record)

    def params(self, index: int, record: TrialRecord | None) -> dict[str, Any]:
        if record is not None:  # planned or started by an earlier command: keep its parameters
            return dict(record.params)
        trial = self.study.ask(self.distributions)
        self.asked[index] = trial
        return {p.key: p.choices[trial.params[p.key]] if p.kind == "choice" else trial.params[p.key] for p in self.space}

    def observe(self, record: TrialRecord) -> None:
        done = record.status == "finished" and record.best is not None
        state = self.optuna.trial.TrialState.COMPLETE if done else self.optuna.trial.TrialState.FAIL
        value = record.best if done else None
        if record.index in self.asked:
            self.study.tell(self.asked.pop(record.index), value, state=state)
            return
        params = {p.key: _encode(p, record.params[p.key]) for p in self.space}
        self.study.add_trial(self.optuna.trial.create_trial(params=params, distributions=self.distributions,
                                                            value=value, state=state))


def _distribution(optuna: Any, p: Param) -> Any:
    d = optuna.distributions
    if p.kind == "choice":
        return d.CategoricalDistribution(list(range(len(p.choices))))
    if p.kind == "int":
        return d.IntDistribution(int(p.low), int(p.high), step=p.step)
    return d.FloatDistribution(p.low, p.high, log=p.kind == "log_uniform")


def _encode(p: Param, value: Any) -> Any:
    return p.choices.index(value) if p.kind == "choice" else value


def build_search(spec: SweepSpec, records: dict[int, TrialRecord]) -> RandomSearch | GridSearch | TPESearch:
    method = spec.settings.method
    if method == "grid":
        return GridSearch(spec)
    if method == "tpe":
        return TPESearch(spec, records)
    return RandomSearch(spec)
