"""Hyperparameter sweeps without a trial run: the search space (log-uniform
draws, grids), the sweep file's errors, command-line overrides, a spent
budget, ranking, GPU slots, and the model-based search. (Real sweeps through
the CLI: tests/e2e/test_sweep.py.)"""

import io
import json
import sys

import numpy as np
import pytest
import yaml
from scipy import stats

from dist_train.errors import DistTrainError
from launcher.tools.sweep.results import ranked
from launcher.tools.sweep.scheduler import SweepScheduler, gpu_slots
from launcher.tools.sweep.space import grid_params, parse_space, random_params
from launcher.tools.sweep.spec import load_sweep
from launcher.tools.sweep.trials import TrialRecord, read_outcome, read_records_of_sweep, write_record
from tests.conftest import REPO


# ------------------------------------------------------------ the space

def test_log_uniform_draws_stay_in_range_and_are_log_uniform():
    space = parse_space({"optim.lr": {"log_uniform": [1.0e-5, 1.0e-1]}})
    draws = np.array([random_params(space, seed=0, trial=i)["optim.lr"] for i in range(4000)])
    assert draws.min() >= 1e-5 and draws.max() <= 1e-1
    logs = np.log10(draws)
    # Kolmogorov-Smirnov: log10 of the draws against uniform on [-5, -1]
    assert stats.kstest(logs, stats.uniform(loc=-5, scale=4).cdf).pvalue > 0.01
    # and by hand: the four decades each get a quarter (chi-square, 3 degrees of freedom, p = 0.01)
    counts = np.histogram(logs, bins=[-5, -4, -3, -2, -1])[0]
    chi2 = ((counts - 1000) ** 2 / 1000).sum()
    assert chi2 < 11.34, counts
    # the same test tells plain uniform draws apart: it has the power to fail
    linear = np.random.default_rng(0).uniform(1e-5, 1e-1, 4000)
    assert stats.kstest(np.log10(linear), stats.uniform(loc=-5, scale=4).cdf).pvalue < 1e-6


def test_random_draws_depend_only_on_seed_and_trial_number():
    space = parse_space({"model.hidden_sizes": {"choice": [[64], [128, 64]]}, "train.epochs": {"int": [2, 10, ], "step": 2},
                         "model.dropout": {"uniform": [0.0, 0.5]}})
    first = [random_params(space, 7, i) for i in range(50)]
    assert first == [random_params(space, 7, i) for i in range(50)]
    assert first != [random_params(space, 8, i) for i in range(50)]
    assert {tuple(p["model.hidden_sizes"]) for p in first} == {(64,), (128, 64)}
    assert {p["train.epochs"] for p in first} <= {2, 4, 6, 8, 10} and all(0 <= p["model.dropout"] <= 0.5 for p in first)


def test_grid_covers_exactly_the_grid(tmp_path):
    sweep = tmp_path / "grid.yaml"
    sweep.write_text(yaml.safe_dump({
        "base": f"{REPO}/configs/cpu_test.yaml", "method": "grid", "out_dir": str(tmp_path / "out"),
        "space": {"optim.lr": {"log_uniform": [1.0e-3, 1.0e-1], "num": 3}, "model.hidden_sizes": {"choice": [[8], [16, 8]]},
                  "train.epochs": {"int": [1, 3]}}}))
    spec = load_sweep(sweep)
    points = grid_params(spec.space)
    expected = {(lr, hs, ep) for lr in (1e-3, 1e-2, 1e-1) for hs in ((8,), (16, 8)) for ep in (1, 2, 3)}
    got = [(round(p["optim.lr"], 12), tuple(p["model.hidden_sizes"]), p["train.epochs"]) for p in points]
    assert len(got) == 18 and set(got) == {(round(lr, 12), hs, ep) for lr, hs, ep in expected}
    out = io.StringIO()
    assert SweepScheduler(spec, out=out).dry_run() == 0  # the plan the sweep would run: every point once
    lines = out.getvalue().splitlines()
    assert [line.split()[0] for line in lines] == [f"trial-{i:04d}" for i in range(18)]
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
    capped = load_sweep(sweep, ["budget.max_trials=5"])
    assert SweepScheduler(capped, out=io.StringIO()).search.planned == 5


@pytest.mark.parametrize("change, words", [
    ({"space": {"optim.lr": {"log_uniform": [0, 1]}}}, "'space.optim.lr.log_uniform': low 0 must be greater than 0"),
    ({"space": {"optim.lr": {"uniform": [0.1, 0.2], "nun": 3}}}, "'space.optim.lr.nun': unknown key"),
    ({"space": {"optim.lr": [0.1, 0.2]}}, "'space.optim.lr': must be a distribution"),
    ({"space": {"lr": {"choice": [0.1]}}}, "'space.lr': is not a run-config key"),
    ({"method": "grid"}, "'space.optim.lr': a log_uniform range has no finite grid (hint: add num: 4"),
    ({"method": "bayes"}, "'method': 'bayes' is not allowed (hint: choose one of: random, grid, tpe)"),
    ({"budget": {"max_trial": 3}}, "'budget.max_trial': unknown key"),
    ({"budget": {}}, "'budget': a random search needs an end"),
    ({"metric": "test_accuracy"}, "'metric': 'test_accuracy' is not allowed"),
    ({"overrides": ["optim.lrr=0.1"]}, "'optim.lrr': unknown key"),
    ({"base": "missing.yaml"}, "'base': 'missing.yaml' is not a file"),
])
def test_sweep_file_mistakes_name_the_key(tmp_path, change, words):
    raw = {"base": f"{REPO}/configs/cpu_test.yaml", "space": {"optim.lr": {"log_uniform": [1.0e-3, 1.0e-1]}},
           "budget": {"max_trials": 2}, **change}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(DistTrainError) as err:
        load_sweep(tmp_path / "s.yaml")
    assert words in str(err.value) and "s.yaml" in str(err.value)


def test_a_space_key_the_config_does_not_have_stops_the_sweep_before_any_trial(tmp_path):
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({
        "base": f"{REPO}/configs/cpu_test.yaml", "out_dir": str(tmp_path / "out"), "budget": {"max_trials": 2},
        "space": {"optim.lrr": {"log_uniform": [1.0e-3, 1.0e-1]}}}))
    with pytest.raises(DistTrainError, match="config key 'optim.lrr': unknown key"):
        SweepScheduler(load_sweep(tmp_path / "s.yaml"), out=io.StringIO()).run()
    assert not (tmp_path / "out").exists()


def test_command_line_overrides_go_to_the_sweep_or_to_the_base_config(tmp_path):
    spec = load_sweep(f"{REPO}/configs/sweep_digits.yaml", ["budget.max_trials=3", "train.epochs=2", f"out_dir={tmp_path}"])
    assert spec.settings.budget.max_trials == 3 and spec.base.train.epochs == 2 and spec.out_dir == tmp_path
    assert spec.base.early_stopping.enabled  # the file's own overrides still apply
    with pytest.raises(DistTrainError, match="'bogus': is neither a sweep setting nor a run-config section"):
        load_sweep(f"{REPO}/configs/sweep_digits.yaml", ["bogus=1"])


def test_a_spent_time_budget_starts_no_trial(tmp_path):
    spec = load_sweep(f"{REPO}/configs/sweep_digits.yaml", [f"out_dir={tmp_path}", "budget.max_minutes=1e-9"])
    out = io.StringIO()
    assert SweepScheduler(spec, out=out).run() == 1  # nothing finished
    assert "the time budget of 1e-09 min is spent" in out.getvalue() and "[sweep] no trial finished" in out.getvalue()
    assert not list(tmp_path.glob("trial-*"))


def test_ranking_puts_the_best_finished_trials_first_then_unfinished_then_failed():
    records = [TrialRecord(0, {}, "finished", best=0.90), TrialRecord(1, {}, "failed"),
               TrialRecord(2, {}, "finished", best=0.95), TrialRecord(3, {}, "stopped", best=0.99),
               TrialRecord(4, {}, "finished", best=0.80)]
    assert [r.index for r in ranked(records, "max")] == [2, 0, 4, 3, 1]
    assert [r.index for r in ranked(records, "min")] == [4, 0, 2, 3, 1]


def test_a_regression_trial_keeps_its_test_metrics_and_its_best_lower_value(tmp_path):
    # metrics.jsonl as a regression run writes it: no accuracy anywhere
    lines = [{"event": "start", "step": 0},
             {"event": "epoch", "epoch": 0, "step": 5, "val_loss": 0.9, "val_mse": 0.9, "val_mae": 0.7, "val_r2": 0.1},
             {"event": "epoch", "epoch": 1, "step": 10, "val_loss": 0.5, "val_mse": 0.5, "val_mae": 0.5, "val_r2": 0.5},
             {"event": "epoch", "epoch": 2, "step": 15, "val_loss": 0.6, "val_mse": 0.6, "val_mae": 0.6, "val_r2": 0.4},
             {"event": "test", "step": 15, "test_loss": 0.55, "test_mse": 0.55, "test_mae": 0.58, "test_r2": 0.45}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    outcome = read_outcome(tmp_path, "val_mse", "min")
    assert outcome["best"] == 0.5 and outcome["epochs"] == 3
    assert outcome["test"] == {"test_loss": 0.55, "test_mse": 0.55, "test_mae": 0.58, "test_r2": 0.45}
    assert outcome["test_accuracy"] is None
    record = TrialRecord(0, {}, test=outcome["test"])  # and it survives the trial.json round trip
    write_record(tmp_path, record)
    assert read_records_of_sweep(tmp_path)[0].test == outcome["test"]


def test_parallel_trials_get_disjoint_gpus():
    assert gpu_slots(["0", "1", "2", "3"], 2, 2) == ["0,1", "2,3"]
    assert gpu_slots(["4", "6"], 2, 1) == ["4", "6"]
    with pytest.raises(DistTrainError, match="need 4 GPUs, and 3 are visible"):
        gpu_slots(["0", "1", "2"], 2, 2)


# ------------------------------------------------------------ model-based search (optional optuna)

def tpe_spec(tmp_path, *overrides):
    (tmp_path / "tpe.yaml").write_text(yaml.safe_dump({
        "base": f"{REPO}/configs/cpu_test.yaml", "method": "tpe", "out_dir": str(tmp_path / "out"),
        "budget": {"max_trials": 8}, "space": {"optim.lr": {"log_uniform": [1.0e-4, 1.0e-1]},
                                               "model.hidden_sizes": {"choice": [[8], [32, 16]]}}}))
    return load_sweep(tmp_path / "tpe.yaml", list(overrides))


def test_tpe_without_optuna_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if not installed
    with pytest.raises(DistTrainError, match=r"pip install 'dist-train\[sweep\]'"):
        SweepScheduler(tpe_spec(tmp_path), out=io.StringIO())


def test_tpe_proposes_in_range_and_learns_from_earlier_trials(tmp_path):
    pytest.importorskip("optuna")
    from launcher.tools.sweep.search import TPESearch

    spec = tpe_spec(tmp_path)
    search = TPESearch(spec, {})
    records = {}
    for i in range(4):
        params = search.params(i, None)
        assert 1e-4 <= params["optim.lr"] <= 1e-1 and params["model.hidden_sizes"] in ([8], [32, 16])
        records[i] = TrialRecord(i, params, "finished" if i != 2 else "failed", best=None if i == 2 else 0.5 + i / 10)
        search.observe(records[i])
    assert [t.state.name for t in search.study.trials] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]
    # a later sweep command rebuilds the study from the records, and does not draw the same trials again
    resumed = TPESearch(spec, records)
    assert [t.value for t in resumed.study.trials] == [0.5, 0.6, None, 0.8]
    assert resumed.params(4, None) not in [r.params for r in records.values()]
