"""Fixtures for the Airflow tests: a throwaway Airflow home (SQLite) and lake per test session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from e2e_support import DAYS, FEATURES_DAG, SNAPSHOTS, fingerprints, lake_of, wait_backfill

# Airflow reads its home when first imported: keep this process (DagBag tests) off ~/airflow.
if "AIRFLOW_HOME" not in os.environ:
    os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="lockstep-test-airflow-")
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(Path(__file__).resolve().parents[2] / "dags"))


def pytest_configure(config):
    # Also declared in setup.cfg; registered here too so `--strict-markers` accepts it either way.
    config.addinivalue_line("markers", "airflow: runs Airflow itself (dags test, scheduler, API server, UI)")


@pytest.fixture(scope="session")
def airflow_local(tmp_path_factory):
    """An initialised Airflow home (db migrated, pool, admin/admin) with its own empty lake."""
    from jobs.local.airflow_local import AirflowLocal, free_port

    root = tmp_path_factory.mktemp("airflow")
    af = AirflowLocal(root / "home", root / "lake", port=free_port())
    af.init()
    yield af
    af.stop()


@pytest.fixture(scope="session")
def lake(airflow_local):
    from jobs.config import Config

    return Config(lake_root=airflow_local.lake).lake()


@pytest.fixture(scope="session")
def scheduler_stack(tmp_path_factory):
    """A running Airflow (scheduler, dag-processor, api-server; LocalExecutor on SQLite) on a free port,
    with its own home and lake. Shared by the end-to-end and UI tests."""
    from jobs.local.airflow_local import AirflowLocal, free_port

    root = tmp_path_factory.mktemp("stack")
    af = AirflowLocal(root / "home", root / "lake", port=free_port())
    af.init()
    af.start(("scheduler", "dag-processor", "api-server"))
    try:
        af.wait_until_up(timeout=240)
        yield af
    finally:
        af.stop()


@pytest.fixture(scope="session")
def first_backfill(scheduler_stack):
    stack = scheduler_stack
    stack.wait_for_dag(FEATURES_DAG)
    b = stack.create_backfill(FEATURES_DAG, DAYS[0], DAYS[-1], max_active_runs=2)
    wait_backfill(stack, b["id"])
    runs = [r for r in stack.dag_runs(FEATURES_DAG) if r["run_type"] == "backfill"]
    lake = lake_of(stack)
    return {
        "runs": runs,
        "fingerprints": fingerprints(lake),
        "created": {ds: lake.table(SNAPSHOTS).manifest(ds).created_at for ds in DAYS},
    }
