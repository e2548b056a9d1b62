"""CDNOW through the declarations gives today's feature snapshots, value for value.

``tests/fixtures/cdnow_results_before_declarations.json`` holds per-column digests computed
before the declarations existed (snapshots 1997-03-31 and 1998-01-04 of
``customer_activity_v1``). Landing the ``cdnow_purchases`` source (its ``cdnow`` parser) and
building the set's snapshots from ``raw_events/cdnow_purchases`` must reproduce them exactly;
the snapshots must also pass the suites derived from the declarations.
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

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "cdnow_results_before_declarations.json"
DAYS = ("1997-03-31", "1998-01-04")


def digest(df: pd.DataFrame, keys: list[str]) -> dict:
    """The fixture's digest (``/tmp/before/capture.py``): rows, and a sha256 per column."""
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
def cfg(tmp_path_factory) -> Config:
    cfg = Config(lake_root=str(tmp_path_factory.mktemp("cdnow_identity") / "lake"))
    manifests = land(cfg, "cdnow_purchases", "1997-01-01", DAYS[-1])
    assert manifests[0].table == "raw_events/cdnow_purchases"
    for ds in DAYS:
        build_snapshot(cfg, ds, "customer_activity_v1")
    return cfg


@pytest.mark.parametrize("ds", DAYS)
def test_snapshot_equals_the_one_before_the_declarations(cfg, ds):
    before = json.loads(FIXTURE.read_text())[f"snapshot/{ds}"]
    got = digest(cfg.lake().table("feature_snapshots/customer_activity_v1").read(ds), ["customer_id"])
    assert got["rows"] == before["rows"] > 0
    differ = sorted(c for c in before if got.get(c) != before[c])
    assert not differ, f"columns that changed: {differ}"
    assert set(got) == set(before)


def test_landed_partitions_and_snapshots_pass_their_derived_suites(cfg):
    for ds in ("1997-01-01", "1997-03-31", "1998-01-04"):
        r = validate_partition(cfg, "raw_events", ds, source="cdnow_purchases", alert=False, docs=False)
        assert r.success and r.table == "raw_events/cdnow_purchases"
    for ds in DAYS:
        r = validate_partition(
            cfg, "feature_snapshots", ds, feature_set="customer_activity_v1", alert=False, docs=False
        )
        assert r.success, r.describe()
