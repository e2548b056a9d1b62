"""Fixtures shared by every test module.

* ``spark``: this process's SparkSession (``local[2]``), the same one the Spark
  engine uses (``jobs.engines.spark_engine.get_spark``); started once per session.
* ``dask_client``: a ``distributed`` LocalCluster of 2 worker processes x 1 thread;
  pass it to the Dask engine as ``run(..., client=dask_client)``.
* ``make_config``: a ``jobs.config.Config`` whose lake (and scratch) is under the test's tmp dir.
* ``spark_standalone_cluster`` / ``dask_cli_scheduler``: real clusters as separate processes on
  loopback (``clusters.py``): a Spark standalone master + 1 worker (1 core, 1g) and a ``dask
  scheduler`` + 2 ``dask worker`` (1 thread, 2GiB each), started once per session. Their workers'
  ``PYTHONPATH`` holds this checkout's ``jobs`` only: ``features`` reaches them by the engines'
  shipping. Tests using them also carry the ``cluster`` marker.
* ``new_airflow``: ``new_airflow(root, lake=None) -> AirflowLocal``, an initialised Airflow home under
  ``root`` (db migrated, the Lockstep pool, admin/admin) on a free port: a copy of one home initialised
  once per session (``AirflowLocal.init``), its ``airflow.cfg`` paths rewritten to the copy, its own
  API / JWT secrets.

Tests that use the first two should carry the ``spark`` / ``dask`` markers
(registered in setup.cfg) so ``-m "not spark"`` deselects them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from clusters import dask_cli_cluster, jobs_only_path, spark_standalone


@pytest.fixture(scope="session")
def spark():
    pytest.importorskip("pyspark")
    if shutil.which("java") is None:
        pytest.skip("Spark needs a Java runtime (java not on PATH)")
    from jobs.engines.spark_engine import get_spark

    session = get_spark("local[2]")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def dask_client():
    pytest.importorskip("distributed")
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, memory_limit="3GiB", dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


@pytest.fixture
def make_config(tmp_path):
    """``make_config(engine="local", **fields)`` -> Config with its lake under ``tmp_path``."""
    from jobs.config import Config

    def make(engine: str = "local", **fields):
        fields.setdefault("lake_root", str(tmp_path / "lake"))
        return Config(engine=engine, **fields)

    return make


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


@pytest.fixture(scope="session")
def new_airflow(tmp_path_factory):
    """``new_airflow(root, lake=None)``: an initialised Airflow home ``root/home`` over ``lake``
    (default ``root/lake``), not started. ``airflow db migrate`` + the pool run once per session, on the
    first call; every home after that is a copy (the metadata DB holds no path; ``airflow.cfg`` does)."""
    from jobs.local.airflow_local import AirflowLocal, free_port

    template: list[Path] = []

    def make(root, lake=None) -> AirflowLocal:
        root = Path(root)
        if not template:
            seed_root = tmp_path_factory.mktemp("airflow-template")
            seed = AirflowLocal(seed_root / "home", seed_root / "lake")
            seed.init()
            template.append(seed.home)
        home = (root / "home").resolve()
        shutil.copytree(template[0], home, ignore=shutil.ignore_patterns(".api_secret_key", ".jwt_secret"))
        cfg = home / "airflow.cfg"
        cfg.write_text(cfg.read_text().replace(str(template[0]), str(home)))
        return AirflowLocal(home, root / "lake" if lake is None else lake, port=free_port())

    return make


# ---- parallel runs (pytest-xdist, ``-n 2 --dist loadgroup`` in setup.cfg) ------------------------------
#: Session fixtures that start real servers or clusters, or build a large lake: every test file using one of
#: them runs on the same worker (one scheduler stack, one standalone cluster, one lake), not one per worker.
SHARED_SESSION_FIXTURES = (
    "scheduler_stack",
    "spark_standalone_cluster",
    "dask_cli_scheduler",
    "training_lake_template",
)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the marks into the node ids
def pytest_collection_modifyitems(config, items):
    """Group the tests for ``--dist loadgroup``: a test file is one group (its module fixtures set up
    once), and the files sharing one of ``SHARED_SESSION_FIXTURES`` are one group together."""
    by_file: dict[str, str] = {}
    for item in items:
        file = item.nodeid.split("::", 1)[0]
        shared = next((f for f in SHARED_SESSION_FIXTURES if f in item.fixturenames), None)
        if shared is not None and not by_file.get(file, "").startswith("shared:"):
            by_file[file] = f"shared:{shared}"
        by_file.setdefault(file, file)
    for item in items:
        item.add_marker(pytest.mark.xdist_group(by_file[item.nodeid.split("::", 1)[0]]))


# ---- the bad-input corpus -----------------------------------------------------------------------------
# Every test that feeds one kind of bad input and asserts the clear error carries
# ``@pytest.mark.bad_input("<where>: <kind>")`` (a test provoking several kinds carries one mark each).
# ``pytest --collect-only -q -m bad_input --bad-input-kinds=FILE`` writes {kind: [test ids]} to FILE
# (``-``: prints the kinds); tests/test_bad_input_corpus.py counts them.
def pytest_addoption(parser):
    parser.addoption(
        "--bad-input-kinds",
        metavar="FILE",
        help="write the bad_input kinds of the collected tests as JSON ('-': print)",
    )


def pytest_collection_finish(session):
    import json

    target = session.config.getoption("--bad-input-kinds")
    if not target:
        return
    kinds: dict[str, list[str]] = {}
    for item in session.items:
        for mark in item.iter_markers("bad_input"):
            if len(mark.args) != 1 or not isinstance(mark.args[0], str) or ": " not in mark.args[0]:
                raise pytest.UsageError(f"{item.nodeid}: bad_input wants one '<where>: <kind>' string, got {mark.args}")
            kinds.setdefault(mark.args[0], []).append(item.nodeid)
    if target == "-":
        for kind in sorted(kinds):
            print(f"{kind}  ({len(kinds[kind])} test(s))")
        print(f"{len(kinds)} kinds of bad input")
    else:
        with open(target, "w") as f:
            json.dump(kinds, f, indent=2, sort_keys=True)
