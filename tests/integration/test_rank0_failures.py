"""A side effect that fails on rank 0 (making the run directory) stops every
rank at once with rank 0's message, instead of leaving the others waiting for
dist.timeout_s and then reporting a lost peer (real gloo workers)."""

import time

from dist_train.config import load_config
from dist_train.errors import DistTrainError
from dist_train.run import run
from tests.multiproc import run_workers

TIMEOUT_S = 60


def failing_worker(env, run_dir):
    cfg = load_config(None, ["data.source=synthetic", "data.num_samples=200", "train.epochs=1", "dist.device=cpu",
                             f"dist.timeout_s={TIMEOUT_S}", "wandb.mode=disabled", f"run.dir={run_dir}"])
    start = time.monotonic()
    try:
        run(cfg, env)
    except DistTrainError as exc:
        return {"message": str(exc), "code": exc.exit_code, "seconds": time.monotonic() - start}
    return {"message": None}


def test_a_run_directory_rank0_cannot_create_stops_every_rank_with_its_message(tmp_path):
    run_dir = tmp_path / "runs" / "job"
    run_dir.parent.mkdir()
    run_dir.write_text("a file where the run directory should be")  # mkdir fails on rank 0 only
    r0, r1 = run_workers(failing_worker, 2, str(run_dir), timeout_s=TIMEOUT_S, pg_timeout_s=TIMEOUT_S)
    assert r0["message"] is not None and r0["message"] == r1["message"]
    assert f"cannot write the run directory {run_dir}" in r0["message"] and "choose a run.dir" in r0["message"]
    assert r0["code"] == r1["code"] == 2
    assert r1["seconds"] < TIMEOUT_S / 3  # at once, not after the collective's timeout
    assert run_dir.read_text().startswith("a file") and sorted(p.name for p in run_dir.parent.iterdir()) == ["job"]
