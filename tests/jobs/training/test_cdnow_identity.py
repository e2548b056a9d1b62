"""CDNOW through the declarations gives today's labels and training sets, value for value.

``tests/fixtures/cdnow_results_before_declarations.json`` holds per-column digests computed
before the declarations existed (``labels`` and ``training_sets/customer_activity_v1`` at the
cut-offs 1997-06-02 and 1997-12-29, 90-day horizon); the model ``repurchase_90d`` must
reproduce them exactly.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jobs.config import Config
from jobs.training.labels import build_labels, labels_table
from jobs.training.training_set import build_training_set, training_set_table

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "cdnow_results_before_declarations.json"
CUTOFFS = ("1997-06-02", "1997-12-29")


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
def lake(tmp_path_factory) -> Config:
    from jobs.ingest.landing import land

    cfg = Config(lake_root=str(tmp_path_factory.mktemp("cdnow_identity") / "lake"))
    land(cfg, "cdnow_purchases", "1997-01-01", "1998-03-28")  # the 90-day horizon of 1997-12-29
    build_labels(cfg, "repurchase_90d", CUTOFFS)
    for c in CUTOFFS:
        build_training_set(cfg, "repurchase_90d", c, validate=False)
    return cfg


@pytest.fixture(scope="module")
def before() -> dict:
    return json.loads(FIXTURE.read_text())


@pytest.mark.parametrize("ds", CUTOFFS)
def test_labels_equal_the_digests_from_before(lake, before, ds):
    m = lake.repo().model("repurchase_90d")
    got = labels_table(lake.lake(), m).read(ds)
    assert m.labels_table == "labels/repurchase_90d"
    assert digest(got, ["customer_id"]) == before[f"labels/{ds}"]


@pytest.mark.parametrize("ds", CUTOFFS)
def test_training_sets_equal_the_digests_from_before(lake, before, ds):
    m = lake.repo().model("repurchase_90d")
    got = training_set_table(lake.lake(), m).read(ds)
    assert m.training_table == "training_sets/repurchase_90d"
    assert list(got.columns) == ["customer_id", "as_of", "label", *m.feature_names]
    assert digest(got, ["customer_id"]) == before[f"training_set/{ds}"]
