"""The Dask cluster a training job runs on (the baseline, the Dask LightGBM backend, the search)."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def dask_client(cfg, client=None):
    """A ``distributed`` client for a training job: ``client`` when given (not closed here), else one
    connected to ``cfg.dask_address``, else a LocalCluster sized by ``cfg`` for the duration.

    Its workers get the driver's ``features`` package and are checked to import its kernel, as
    the Dask engine's are (``jobs.engines.shipping``): the tasks unpickle declarations.
    """
    if client is not None:
        _prepare(client)
        yield client
        return
    from distributed import Client, LocalCluster

    if cfg.dask_address:
        with Client(cfg.dask_address) as c:
            _prepare(c)
            yield c
        return
    with (
        LocalCluster(
            n_workers=cfg.dask_workers,
            threads_per_worker=cfg.dask_threads_per_worker,
            memory_limit=cfg.dask_memory_limit,
            processes=True,
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as c,
    ):
        _prepare(c)
        yield c


def _prepare(c) -> None:
    from jobs.engines.shipping import ship_to_dask, verify_dask

    ship_to_dask(c)
    verify_dask(c)
