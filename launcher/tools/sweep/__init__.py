"""Hyperparameter search: `dist-train sweep SWEEP.yaml` runs trials of a base
config over a search space (random, grid, or optuna's TPE), each an ordinary
run, and ranks them. spec.py reads the sweep file, space.py holds the
distributions, search.py proposes parameters, trials.py is one trial on disk,
scheduler.py starts trials and collects them, results.py writes the table and best.yaml."""
