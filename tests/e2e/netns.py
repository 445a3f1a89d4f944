"""The two network-namespace hosts of tests/e2e/netns_hosts.sh, for the tests
that run across them (test_multinode.py, test_slurm_multinode.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from tests.conftest import REPO

SCRIPT = f"{REPO}/tests/e2e/netns_hosts.sh"
PREFIX = os.environ.get("DTN_PREFIX", "dtn")  # the script's names: namespaces, veths, hostnames
HOST = {1: f"{PREFIX}-h1", 2: f"{PREFIX}-h2"}
ADDR = {1: "10.200.0.1", 2: "10.200.0.2"}


def cannot_make_hosts() -> str | None:
    """Why this machine cannot have the two hosts (a reason to skip), or None."""
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nsenter", "unshare"):
        if shutil.which(tool) is None:
            return f"`{tool}` is missing (iproute2, util-linux)"
    if subprocess.run(["unshare", "--net", "--mount", "--uts", "true"], capture_output=True).returncode != 0:
        return "this machine does not allow new network namespaces (a container without CAP_SYS_ADMIN?)"
    return None
