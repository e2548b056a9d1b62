"""Pure parts of the skew job: tolerance, cause attribution, drift measures, thresholds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.spec import FeatureSet, agg, count
from jobs.skew.job import (
    _breaches,
    _merge_thresholds,
    attribute,
    equal_within,
    psi_js,
    quantile_edges,
)

nan = np.nan


def test_equal_within_nulls_and_tolerance():
    a = np.array([1.0, nan, nan, 1.0, 100.0, 0.1 + 0.2])
    b = np.array([1.0, nan, 1.0, nan, 100.5, 0.3])
    assert equal_within(a, b, (0, 0)).tolist() == [True, True, False, False, False, False]
    assert equal_within(a, b, (0.0, 0.01)).tolist() == [True, True, False, False, True, True]
    assert equal_within(a, b, (1e-12, 0)).tolist()[-1]


FS = FeatureSet(
    "t", "e", (count("c7", 7), agg("s7", "sum", "x", 7), agg("m", "mean", "x", None, tolerance=(0.0, 1e-9)))
)


def test_attribute_cause_precedence():
    served = pd.DataFrame({"c7": [1, 2, 3, 4, 5, 6], "s7": [1.0, 2, 3, 4, 5, 6], "m": [1.0, 2, 3, 4, 5, 6]})
    known = served.copy()
    as_of = served.copy()
    known.loc[0, "c7"] = 9  # row 0: logic skew
    as_of.loc[1, "c7"] = 3  # row 1: served == known != as_of: late data
    known.loc[2, "s7"] = 0.0  # row 2: stale (whole vector equals the snapshot)
    known.loc[3, "c7"] = 0  # row 3: version skew
    known.loc[4, "m"] = 5.0 * (1 + 1e-12)  # row 4: within the declared relative tolerance
    known.loc[5, "c7"] = 0  # row 5: degraded
    snap = served.copy() * 0 - 1
    snap.loc[2] = served.loc[2]
    current = np.array([True, True, True, False, True, True])
    degraded = np.array([False] * 5 + [True])
    c = attribute(FS, served, known, as_of, [snap], current, degraded)
    assert c["c7"].tolist() == ["logic_skew", "late_data", "", "version_skew", "", "degraded"]
    assert c["s7"].tolist() == ["", "", "staleness", "", "", ""]
    assert (c["m"] == "").all()


def test_psi_and_js_bits():
    rng = np.random.default_rng(0)
    train = rng.normal(size=20_000)
    same = rng.normal(size=20_000)
    shifted = rng.normal(1.0, size=20_000)
    psi0, js0 = psi_js(train, same)
    psi1, js1 = psi_js(train, shifted)
    assert psi0 < 0.01 and js0 < 0.002
    assert psi1 > 0.25 and 0.05 < js1 <= 1.0
    assert len(quantile_edges(train)) == 9
    # Disjoint supports: JS is exactly 1 bit.
    _, js = psi_js(np.zeros(100), np.full(100, np.nan))
    assert js == pytest.approx(1.0)


def test_breaches_name_feature_metric_and_counts():
    table = pd.DataFrame(
        [
            {"feature": "c7", "rows": 10, "logic_skew": 1, "version_skew": 0, "psi": 0.3},
            {"feature": "s7", "rows": 10, "logic_skew": 0, "version_skew": 0, "psi": 0.5},
            {"feature": "__score__", "rows": 10, "rescore_max_abs_diff": 0.0},
        ]
    )
    got = _breaches(table, _merge_thresholds({"c7": {"psi": 0.25}}))
    assert got == [("c7", "logic_skew_rate=0.1 > 0 (1 of 10 rows)"), ("c7", "psi=0.3 > 0.25")]
