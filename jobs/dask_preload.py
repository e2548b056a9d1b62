"""Dask worker preload: numba's compiler machinery warmed when a worker starts, not by its first task.

The kernel's loops are numba-compiled (``features.kernel``) and cached on disk, but the first
compiled call in a process still pays numba's own start-up (~0.4-0.6 s measured here: its LLVM
target and runtime), once per worker process — on a fresh cluster, in the middle of the first
build. A worker started with ``--preload jobs.dask_preload`` (``dask worker``, the docker-compose
service, the LocalCluster ``jobs.engines.dask_engine`` creates) pays it at start instead. It warms
numba with a function of its own and imports neither ``features`` nor ``jobs.engines`` (whose
``__init__`` imports ``features``), which is why it lives here: the package the driver ships
(``jobs.engines.shipping``) must still be the one the worker's tasks import.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _warm(x):
    return x + 1


def dask_setup(worker=None) -> None:
    """Called by Dask when the worker starts (``--preload``); also callable directly."""
    _warm(np.zeros(1, dtype=np.int64))
