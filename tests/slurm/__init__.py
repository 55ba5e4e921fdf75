"""A real single-node Slurm cluster for the tests: ``.ci/slurm.sh`` installs, configures and starts
munged, slurmctld and slurmd (or reuses ones already running) from the templates in this folder.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / ".ci" / "slurm.sh"
CANNOT_INSTALL = 3  # .ci/slurm.sh's exit status when the packages cannot be installed
SETUP_TIMEOUT_S = 900  # a first run installs slurm-wlm and munge with apt-get


def start_cluster() -> None:
    """Make sure the cluster is up with its node idle; skip the caller's tests, with the reason,
    only where Slurm cannot be installed here (not root, no apt, no network)."""
    try:
        done = subprocess.run(
            [str(SETUP)], capture_output=True, text=True, timeout=SETUP_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{SETUP} did not finish within {SETUP_TIMEOUT_S} s")
    if done.returncode == CANNOT_INSTALL:
        pytest.skip(f"no Slurm here: {done.stderr.strip().splitlines()[-1]}")
    if done.returncode != 0:
        pytest.fail(f"{SETUP} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
