import os

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _one_thread():
    # Tests compare numbers across processes; keep each one on one thread, as
    # torchrun does for its workers.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# The suite runs on pytest-xdist workers (pyproject's addopts: -n, --dist loadgroup). Tests that share
# this machine's network-namespace hosts (fixed addresses, port 29400) or its SLURM daemons run one at a
# time, in file order, on one worker; every other test goes to whichever worker is free.
# A file whose module fixture costs many jobs keeps its tests on one worker, so the fixture runs once.
GROUPS = {"test_multinode.py": "shared-hosts", "test_slurm_cluster.py": "shared-hosts",
          "test_slurm_multinode.py": "shared-hosts", "test_stop_and_restart.py": "stop-and-restart"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.name in GROUPS:
            item.add_marker(pytest.mark.xdist_group(GROUPS[item.path.name]))
