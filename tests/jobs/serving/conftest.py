"""A small real-data lake for the serving and skew tests (session-scoped, built once).

CDNOW customers 1..4000, ingest days 1997-01-01..1997-04-11, with two perturbations that the
correct serving path must survive and the skew job must explain:

* 3% of amounts nulled (seeded) — exercises null handling (count vs sum/mean/min);
* ``LATE_CUSTOMERS`` get one extra purchase at 1997-04-08 00:00 that arrives only on
  1997-04-11 12:00 — after every request of the replayed day ``DAY`` (1997-04-10).

Snapshots are built for the three days before ``DAY`` (materialized mode and staleness checks).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from features import registry
from jobs.config import Config
from jobs.ingest.cdnow import iter_ingest_days, read_cdnow
from jobs.schemas import raw_schema, to_raw
from jobs.serving.model import LinearModel, StaticSource

DAY = "1997-04-10"
FIRST, LAST = "1997-01-01", "1997-04-11"
LATE_TS = pd.Timestamp("1997-04-08", tz="UTC")
LATE_INGEST = pd.Timestamp("1997-04-11 12:00", tz="UTC")
FS = registry.get("customer_activity_v1")
#: The declared model the CDNOW service serves (the repo's default): its log and WAL are per model.
MODEL = Config().repo().default_model()


def build_events(max_customer: int = 4000, seed: int = 7) -> tuple[pd.DataFrame, np.ndarray]:
    ev = read_cdnow()
    ev = ev[(ev.customer_id <= max_customer) & (ev.ingested_at < pd.Timestamp(LAST, tz="UTC") + pd.Timedelta(days=1))]
    ev = ev.reset_index(drop=True)
    rng = np.random.default_rng(seed)
    amount = ev["amount"].copy()
    amount[rng.random(len(ev)) < 0.03] = np.nan
    ev["amount"] = amount
    # Late purchases for customers active before the day, none of whom buy on DAY-2..DAY.
    before = ev[ev.event_ts < LATE_TS - pd.Timedelta(days=20)].customer_id.unique()
    recent = ev[(ev.event_ts >= LATE_TS) & (ev.event_ts <= pd.Timestamp(LAST, tz="UTC"))].customer_id.unique()
    pool = np.setdiff1d(before, recent)
    late_customers = np.sort(rng.choice(pool, 40, replace=False))
    late = pd.DataFrame(
        {
            "event_id": ev.event_id.max() + 1 + np.arange(len(late_customers)),
            "customer_id": late_customers,
            "event_ts": LATE_TS,
            "ingested_at": LATE_INGEST,
            "n_items": 2,
            "amount": 25.5,
            "category": "standard",
        }
    )
    late["event_ts"] = late["event_ts"].astype("datetime64[us, UTC]")
    late["ingested_at"] = late["ingested_at"].astype("datetime64[us, UTC]")
    ev = pd.concat([ev, late], ignore_index=True)
    return ev, late_customers


def write_lake(root, events: pd.DataFrame) -> Config:
    cfg = Config(lake_root=str(root))
    table = cfg.lake().table(FS.source.table, raw_schema(FS.source))
    for ds, part in iter_ingest_days(events, FIRST, LAST):
        table.write_partition(ds, to_raw(FS.source, part), producer={"job": "test"})
    from jobs.snapshots import build_snapshot

    for ds in pd.date_range(pd.Timestamp(DAY) - pd.Timedelta(days=3), periods=3).strftime("%Y-%m-%d"):
        build_snapshot(cfg, ds, allow_unvalidated=True)
    return cfg


@pytest.fixture(scope="session")
def lake_events():
    return build_events()


@pytest.fixture(scope="session")
def lake_cfg(tmp_path_factory, lake_events):
    return write_lake(tmp_path_factory.mktemp("serving_lake") / "lake", lake_events[0])


@pytest.fixture(scope="session")
def model():
    return LinearModel("churn_test", "3", FS.fingerprint, FS.feature_names)


@pytest.fixture(scope="session")
def training_features(lake_cfg):
    from jobs.snapshots import snapshot_table

    return snapshot_table(lake_cfg.lake(), FS).read("1997-04-07")


@pytest.fixture(scope="session")
def model_source(model, training_features):
    return StaticSource(model, training={(model.name, model.version): training_features})


def fresh_alerts(path) -> list[dict]:
    """The alerts log's lines, less the stale-champion alert (the test models were trained on 1997 data)."""
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [a for a in lines if a["what"] != "stale champion"]
