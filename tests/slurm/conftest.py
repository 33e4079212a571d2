"""A real single-node Slurm for the sbatch tests: started once per session, stopped by PID afterwards."""
from __future__ import annotations

import os

import pytest

from tests.slurm.cluster import Cluster, ClusterUnavailable


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory):
    """Installs the Debian packages when missing; skips only where Slurm cannot be started (fails with CI=true)."""
    cluster = Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except ClusterUnavailable as err:
        cluster.stop()
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but Slurm could not be started: {err}")
        pytest.skip(f"Slurm cannot be started here: {err}")
    try:
        yield cluster
    finally:
        cluster.stop()
