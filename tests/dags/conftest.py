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
def airflow_local(tmp_path_factory, new_airflow):
    """An initialised Airflow home (db migrated, pool, admin/admin) with its own empty lake."""
    af = new_airflow(tmp_path_factory.mktemp("airflow"))
    yield af
    af.stop()


@pytest.fixture(scope="session")
def lake(airflow_local):
    from jobs.config import Config

    return Config(lake_root=airflow_local.lake).lake()


#: The running ``scheduler_stack``, stopped right after the last collected test that uses it.
_STACK: dict[str, object] = {}


@pytest.fixture(scope="session")
def scheduler_stack(tmp_path_factory, new_airflow):
    """A running Airflow (scheduler, dag-processor, api-server; LocalExecutor on SQLite) on a free port,
    with its own home and lake. Shared by the end-to-end and UI tests; stopped after the last of them
    (``pytest_runtest_teardown``), not at the end of the session: an idle scheduler and DAG processor
    would keep parsing and heartbeating through every test collected after them."""
    af = new_airflow(tmp_path_factory.mktemp("stack"))
    af.start(("scheduler", "dag-processor", "api-server"))
    _STACK["af"] = af
    try:
        af.wait_until_up(timeout=240)
        yield af
    finally:
        _STACK.pop("af", None)
        af.stop()


def pytest_runtest_teardown(item, nextitem):
    af = _STACK.get("af")
    if af is None or "scheduler_stack" not in item.fixturenames:
        return
    items = item.session.items
    if not any("scheduler_stack" in later.fixturenames for later in items[items.index(item) + 1 :]):
        _STACK.pop("af")
        af.stop()  # idempotent: the fixture's own teardown finds nothing left to stop


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
