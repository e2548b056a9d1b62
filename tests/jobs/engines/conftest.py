"""Cluster fixtures of the engine tests: a Spark standalone master + worker and a ``dask scheduler`` +
two ``dask worker`` processes, started once per session on loopback (``clusters.py``). Their workers'
``PYTHONPATH`` holds this checkout's ``jobs`` only: ``features`` reaches them by the engines' shipping.
Tests using them carry the ``cluster`` marker (and ``spark`` / ``dask``)."""

from __future__ import annotations

import shutil

import pytest
from clusters import dask_cli_cluster, jobs_only_path, spark_standalone


@pytest.fixture(scope="session")
def spark_standalone_cluster(tmp_path_factory):
    """``{"master": "spark://127.0.0.1:PORT", ...}``: 1 worker, 1 core, 1g."""
    pytest.importorskip("pyspark")
    if shutil.which("java") is None:
        pytest.skip("Spark needs a Java runtime (java not on PATH)")
    root = tmp_path_factory.mktemp("spark-standalone")
    with spark_standalone(root, jobs_only_path(root / "code"), cores=1, memory="1g") as cluster:
        yield cluster


@pytest.fixture(scope="session")
def dask_cli_scheduler(tmp_path_factory):
    """``{"address": "tcp://127.0.0.1:PORT", "workers": {...}}``: 2 workers x 1 thread, 2GiB each."""
    pytest.importorskip("distributed")
    root = tmp_path_factory.mktemp("dask-cli")
    code = jobs_only_path(root / "code")
    with dask_cli_cluster(root, [code, code], memory_limit="2GiB") as cluster:
        yield cluster
