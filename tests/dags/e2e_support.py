"""Helpers of the end-to-end Airflow tests (the lake of a running stack, waiting for backfills)."""

from __future__ import annotations

import time

SNAPSHOTS = "feature_snapshots/customer_activity_v1"
RAW = "raw_events/cdnow_purchases"
#: The DAGs generated from the CDNOW example's declarations.
FEATURES_DAG = "features_daily__cdnow_purchases"
BUILD, VALIDATE = "build_snapshot__customer_activity_v1", "validate_snapshot__customer_activity_v1"
#: The backfill the end-to-end tests create through the REST API: the data's first days, so the
#: snapshots need no raw history landed beforehand.
DAYS = ["1997-01-01", "1997-01-02", "1997-01-03"]


def lake_of(stack):
    from jobs.config import Config

    return Config(lake_root=stack.lake).lake()


def wait_backfill(stack, backfill_id: int, timeout: float = 480) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.check_alive()
        b = stack.api("GET", f"backfills/{backfill_id}")
        if b.get("completed_at"):
            return b
        time.sleep(3)
    raise TimeoutError(f"backfill {backfill_id} not completed after {timeout}s\n{stack.log_tail('scheduler')}")


def fingerprints(lake) -> dict[str, str]:
    out = {}
    for table in (RAW, SNAPSHOTS):
        for ds in DAYS:
            out[f"{table}/ds={ds}"] = lake.table(table).manifest(ds).content_fingerprint
    return out
