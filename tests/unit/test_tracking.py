"""The W&B sink when W&B's process stops reading: no call waits for it, and
the end of the run stops it after a bounded time, with a warning."""

import sys

from dist_train.config import load_config
from tests.helpers import SMALL_WANDB


def test_a_stuck_wandb_never_blocks_training_and_its_end_is_bounded(tmp_path, monkeypatch, capfd):
    """W&B's process stops reading (here: a real process that never reads its
    input stands in for a W&B client stuck on a network that does not answer).
    Rows keep coming far past a pipe's 64 KiB; no call waits for it, and the end
    of the run stops it after FINISH_TIMEOUT_S with a warning."""
    import time

    from dist_train.tracking import WandbSink

    monkeypatch.setattr(WandbSink, "COMMAND", [sys.executable, "-c", "import time; time.sleep(120)"])
    monkeypatch.setattr(WandbSink, "FINISH_TIMEOUT_S", 2.0)
    sink = WandbSink(load_config(None, SMALL_WANDB).wandb, tmp_path, {}, None)
    record = {"event": "lr", "time": 0.0, "step": 0, "lr": 0.1, "padding": "x" * 100}
    slowest = 0.0
    for index in range(5000):  # about 0.8 MB
        start = time.perf_counter()
        sink.log(record, index)
        slowest = max(slowest, time.perf_counter() - start)
    assert len(sink._pending) > 500_000  # the pipe took what it could; the rest waits here
    assert slowest < 5.0  # a blocking write would wait for the writer, 120 s; not a speed figure
    start = time.monotonic()
    sink.finish()
    assert time.monotonic() - start < 10
    err = capfd.readouterr().err
    assert err.count("W&B did not finish within 2s") == 1
