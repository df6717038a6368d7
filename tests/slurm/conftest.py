"""A single-node SLURM cluster for the session (see cluster.py).

The cluster tests fail, never skip, when the cluster cannot start: CI installs
slurm-wlm and munge for them. Deselect them locally with `-m "not slurm"`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from .cluster import SlurmCluster


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    if os.geteuid() != 0:
        pytest.fail("the SLURM tests start munged, slurmctld and slurmd and must run as root")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
