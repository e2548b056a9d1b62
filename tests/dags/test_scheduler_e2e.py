"""A real Airflow (scheduler, DAG processor, API server) runs a backfill created through the REST API —
what the UI's Backfill dialog does — and the lake holds every partition, identical on a re-run."""

from __future__ import annotations

import pytest
from e2e_support import BUILD, DAYS, FEATURES_DAG, RAW, SNAPSHOTS, VALIDATE, fingerprints, lake_of, wait_backfill

pytestmark = [pytest.mark.airflow, pytest.mark.timeout(900)]


def test_backfill_through_the_rest_api_publishes_every_partition(scheduler_stack, first_backfill):
    runs = first_backfill["runs"]
    assert sorted(r["logical_date"][:10] for r in runs) == DAYS
    assert {r["state"] for r in runs} == {"success"}
    lake = lake_of(scheduler_stack)
    assert lake.table(RAW).partitions() == DAYS
    assert lake.table(SNAPSHOTS).partitions() == DAYS
    rows = [lake.table(SNAPSHOTS).manifest(ds).rows for ds in DAYS]
    assert rows == sorted(rows) and rows[0] > 0  # customers accumulate day by day


def test_each_snapshot_day_emits_an_asset_event_naming_its_partition(scheduler_stack, first_backfill):
    from jobs import orchestration as o

    stack = scheduler_stack
    assets = stack.api("GET", "assets", params={"uri_pattern": "feature_snapshots"})["assets"]
    (asset,) = [a for a in assets if a["uri"] == o.asset_uri(SNAPSHOTS)]
    events = stack.api("GET", "assets/events", params={"asset_id": asset["id"], "limit": 100})["asset_events"]
    assert sorted({e["extra"]["ds"] for e in events}) == DAYS


def test_the_same_backfill_again_gives_identical_content(scheduler_stack, first_backfill):
    stack = scheduler_stack
    b = stack.create_backfill(FEATURES_DAG, DAYS[0], DAYS[-1], max_active_runs=2, reprocess="completed")
    wait_backfill(stack, b["id"])
    runs = [r for r in stack.dag_runs(FEATURES_DAG) if r["run_type"] == "backfill"]
    assert {r["state"] for r in runs} == {"success"}
    lake = lake_of(stack)
    assert fingerprints(lake) == first_backfill["fingerprints"]
    # Every run re-landed and re-validated its raw day (identical content, so nothing changed) and its
    # build task found the snapshot up to date (same raw inputs, feature set and kernel): not rewritten.
    # That a stale snapshot IS rebuilt is tested in tests/jobs/test_snapshot_range.py.
    for ds in DAYS:
        assert lake.table(SNAPSHOTS).manifest(ds).created_at == first_backfill["created"][ds]
        assert lake.table(SNAPSHOTS).validated(ds)


def test_a_bad_engine_is_refused_when_the_run_is_triggered(scheduler_stack, first_backfill):
    with pytest.raises(RuntimeError, match=r"HTTP 400.*flink"):
        scheduler_stack.api(
            "POST",
            f"dags/{FEATURES_DAG}/dagRuns",
            {"logical_date": "1997-01-06T00:00:00Z", "conf": {"engine": "flink"}},
        )


def _corrupt_cdnow(path, day: str) -> None:
    """A copy of the shipped CDNOW export whose rows of ``day`` arrive in cents instead of dollars
    (a unit change upstream): every row still parses, only the data-quality suite can catch it."""
    import gzip

    from jobs.ingest.cdnow import CDNOW_PATH

    stamp = day.replace("-", "")
    with gzip.open(CDNOW_PATH, "rt") as src, gzip.open(path, "wt") as dst:
        for i, line in enumerate(src):
            fields = line.split()
            if i > 0 and fields[1] == stamp:
                fields[3] = f"{float(fields[3]) * 100:.2f}"
                line = " ".join(fields) + "\n"
            dst.write(line)


def test_a_corrupted_raw_day_fails_at_validation_and_stops_the_line(scheduler_stack, first_backfill, tmp_path):
    import json

    stack = scheduler_stack
    day = "1997-01-08"
    bad = tmp_path / "CDNOW_cents.txt.gz"
    _corrupt_cdnow(bad, day)
    run = stack.api(
        "POST",
        f"dags/{FEATURES_DAG}/dagRuns",
        {"dag_run_id": "corrupted_raw", "logical_date": f"{day}T00:00:00Z", "conf": {"path": str(bad)}},
    )
    (done,) = stack.wait_for_runs(FEATURES_DAG, 1, timeout=300, dag_run_id=run["dag_run_id"])
    assert done["state"] == "failed"
    tis = stack.api("GET", f"dags/{FEATURES_DAG}/dagRuns/corrupted_raw/taskInstances")["task_instances"]
    states = {t["task_id"]: t["state"] for t in tis}
    assert states == {
        "land_raw": "success",
        "validate_raw": "failed",
        BUILD: "upstream_failed",
        VALIDATE: "upstream_failed",
    }
    # Failed fast: a data-quality failure is not retried.
    assert {t["task_id"]: t["try_number"] for t in tis}["validate_raw"] == 1

    lake = lake_of(stack)
    assert not lake.table(SNAPSHOTS).exists(day)
    assert not lake.table(RAW).exists(day), "the bad raw partition is quarantined, not left readable"
    alerts_log = lake_of(stack).path("_alerts", "alerts.jsonl")
    with open(alerts_log) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    mine = [a for a in lines if FEATURES_DAG in json.dumps(a) and "validate_raw" in json.dumps(a)]
    assert mine, f"no alert line for the failed validation in {alerts_log}: {lines}"
    assert "amount" in json.dumps(mine[-1]), "the alert names what failed"
