"""CDNOW through the declarations gives the results of before them, value for value (issue 11 item 5).

``tests/fixtures/cdnow_results_before_declarations.json`` holds per-column digests computed by the
jobs as they were before the declarations existed (``/tmp/before/capture.py`` of that session):
the snapshots 1997-03-31 and 1998-01-04 of ``customer_activity_v1``, and the labels and training
sets at the cut-offs 1997-06-02 and 1997-12-29 (90-day horizon). Landing the ``cdnow_purchases``
source through its parser and running the ``repurchase_90d`` model's jobs must reproduce every
one exactly; the landed partitions and snapshots must also pass the suites derived from the
declarations.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jobs.config import Config
from jobs.ingest.landing import land
from jobs.quality.validate import validate_partition
from jobs.snapshots import build_snapshot
from jobs.training.labels import build_labels, labels_table
from jobs.training.training_set import build_training_set, training_set_table

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "cdnow_results_before_declarations.json"
SNAPSHOT_DAYS = ("1997-03-31", "1998-01-04")
CUTOFFS = ("1997-06-02", "1997-12-29")


def digest(df: pd.DataFrame, keys: list[str]) -> dict:
    """The fixture's digest: rows, and a sha256 per column of the frame sorted by ``keys``."""
    df = df.sort_values(keys, kind="stable").reset_index(drop=True)
    out: dict = {"rows": len(df)}
    for c in df.columns:
        s = df[c]
        if isinstance(s.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(s.dtype):
            arr = s.dt.tz_convert("UTC").astype("datetime64[us, UTC]").array.asi8.astype(np.int64)
        elif pd.api.types.is_numeric_dtype(s.dtype):
            arr = s.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            arr = np.array([str(v) if v is not None and v == v else "<NA>" for v in s], dtype=object)
            out[c] = hashlib.sha256("\x1f".join(arr).encode()).hexdigest()
            continue
        out[c] = hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def before() -> dict:
    return json.loads(FIXTURE.read_text())


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> Config:
    cfg = Config(lake_root=str(tmp_path_factory.mktemp("cdnow_identity") / "lake"))
    manifests = land(cfg, "cdnow_purchases", "1997-01-01", "1998-03-28")  # the 90-day horizon of 1997-12-29
    assert manifests[0].table == "raw_events/cdnow_purchases"
    for ds in SNAPSHOT_DAYS:
        build_snapshot(cfg, ds, "customer_activity_v1", allow_unvalidated=True)
    build_labels(cfg, "repurchase_90d", CUTOFFS, allow_unvalidated=True)
    for c in CUTOFFS:
        build_training_set(cfg, "repurchase_90d", c, validate=False, allow_unvalidated=True)
    return cfg


@pytest.mark.parametrize("ds", SNAPSHOT_DAYS)
def test_snapshots_equal_the_digests_from_before(cfg, before, ds):
    got = digest(cfg.lake().table("feature_snapshots/customer_activity_v1").read(ds), ["customer_id"])
    assert got["rows"] == before[f"snapshot/{ds}"]["rows"] > 0
    assert got == before[f"snapshot/{ds}"]


@pytest.mark.parametrize("ds", CUTOFFS)
def test_labels_equal_the_digests_from_before(cfg, before, ds):
    m = cfg.repo().model("repurchase_90d")
    assert m.labels_table == "labels/repurchase_90d"
    assert digest(labels_table(cfg.lake(), m).read(ds), ["customer_id"]) == before[f"labels/{ds}"]


@pytest.mark.parametrize("ds", CUTOFFS)
def test_training_sets_equal_the_digests_from_before(cfg, before, ds):
    m = cfg.repo().model("repurchase_90d")
    got = training_set_table(cfg.lake(), m).read(ds)
    assert m.training_table == "training_sets/repurchase_90d"
    assert list(got.columns) == ["customer_id", "as_of", "label", *m.feature_names]
    assert digest(got, ["customer_id"]) == before[f"training_set/{ds}"]


def test_landed_partitions_and_snapshots_pass_their_derived_suites(cfg):
    for ds in ("1997-01-01", "1997-03-31", "1998-01-04"):
        r = validate_partition(cfg, "raw_events", ds, source="cdnow_purchases", alert=False, docs=False)
        assert r.success and r.table == "raw_events/cdnow_purchases"
    for ds in SNAPSHOT_DAYS:
        r = validate_partition(
            cfg, "feature_snapshots", ds, feature_set="customer_activity_v1", alert=False, docs=False
        )
        assert r.success, r.describe()
