"""A stop request in a small real process receiving real signals: a repeated
notice is one request, and a later signal stops at once."""

import signal
import subprocess
import sys

from tests.conftest import REPO


REPEAT = """
import os, signal
from dist_train.stop_request import StopRequest
stop = StopRequest().install()
os.kill(os.getpid(), signal.SIGUSR1)   # SLURM's notice to every process of the step
os.kill(os.getpid(), signal.SIGUSR1)   # and torchrun passing it on: the same notice
print("still here", stop.requested, stop.signal_name, flush=True)
stop._first_at -= StopRequest.REPEAT_S  # much later: someone insists
os.kill(os.getpid(), signal.SIGTERM)
print("not reached", flush=True)
"""


def test_a_repeated_notice_is_one_stop_request_and_a_later_signal_stops_at_once():
    proc = subprocess.run([sys.executable, "-c", REPEAT], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.stdout.splitlines() == ["still here True SIGUSR1"], proc.stdout + proc.stderr
    assert proc.returncode == -signal.SIGTERM
