"""Pure parts of the skew job: tolerance, cause attribution, drift measures, thresholds."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from features.spec import FeatureSet, agg, count
from jobs.skew.job import (
    REPORT_SCHEMA,
    SkewReport,
    _alert,
    _breaches,
    _champion,
    _merge_thresholds,
    attribute,
    champion_age,
    drift_findings,
    drift_level,
    equal_within,
    feature_stats,
    lag_quantiles,
    psi_js,
    quantile_edges,
)
from jobs.skew.report import fmt, render

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


# ----------------------------------------------------------------------------- skew vs training semantics


def _hand_built(fs):
    """Six logged rows: row 0 logic skew on c7; row 1 late data on c7 and s7; row 2 late data on s7;
    row 3 logic skew on s7 by one ulp-sized difference (0.1 + 0.2 served, 0.3 offline)."""
    served = pd.DataFrame({"c7": [1.0, 2, 3, 4, 5, 6], "s7": [1.0, 2, 3, 0.1 + 0.2, 5, 6], "m": [1.0, 2, 3, 4, 5, 6]})
    known = served.copy()
    as_of = served.copy()
    known.loc[0, "c7"] = as_of.loc[0, "c7"] = 9.0
    as_of.loc[1, "c7"], as_of.loc[1, "s7"] = 3.0, 4.5
    as_of.loc[2, "s7"] = 7.25
    known.loc[3, "s7"] = as_of.loc[3, "s7"] = 0.3
    rows = pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(6)],
            "entity_id": np.arange(6),
            "request_time": pd.date_range("2024-01-02", periods=6, freq="h", tz="UTC"),
        }
    )
    c = attribute(fs, served, known, as_of, [], np.ones(6, dtype=bool), np.zeros(6, dtype=bool))
    return served, known, as_of, c, rows


def _report(fs, **kw):
    served, known, as_of, c, rows = _hand_built(fs)
    stats = feature_stats(fs, served, known, as_of, c, rows)
    table = pd.DataFrame(stats)
    table.insert(0, "ds", "2024-01-02")
    for col in REPORT_SCHEMA.names:
        if col not in table.columns:
            table[col] = None
    joined = rows.join(served).join(known.add_prefix("known_at__")).join(as_of.add_prefix("as_of__"))
    return SkewReport("2024-01-02", table[REPORT_SCHEMA.names], c, joined, **kw)


def test_late_data_is_not_skew_under_known_at_training():
    rep = _report(FS)
    c7, s7 = rep.feature("c7"), rep.feature("s7")
    assert (c7["mismatches"], c7["late_data"], c7["logic_skew"], c7["mismatches_vs_as_of"]) == (1, 1, 1, 2)
    assert (s7["mismatches"], s7["late_data"], s7["logic_skew"], s7["mismatches_vs_as_of"]) == (1, 2, 1, 3)
    assert c7["mismatch_rate"] == 1 / 6
    assert rep.headline() == {
        "rows": 6,
        "values": 18,
        "mismatches": 2,
        "rows_mismatching": 2,
        "late": 3,
        "rows_late": 2,
    }


def test_late_data_is_skew_under_as_of_training():
    fs = FeatureSet("t", "e", FS.features, training_mode="as_of")
    rep = _report(fs)
    assert rep.feature("c7")["mismatches"] == 2 and rep.feature("s7")["mismatches"] == 3
    assert rep.headline() == {
        "rows": 6,
        "values": 18,
        "mismatches": 5,
        "rows_mismatching": 4,
        "late": 0,
        "rows_late": 0,
    }


def test_differences_are_exact_and_counted():
    rep = _report(FS)
    s7 = rep.feature("s7")
    # one mismatching row whose difference is 5.551115123125783e-17: the max, not a p99 of 0
    assert s7["diff_count"] == 1 and s7["abs_diff_max"] == (0.1 + 0.2) - 0.3 == 5.551115123125783e-17
    assert s7["late_abs_diff_max"] == 4.25  # |3 - 7.25| on row 2 (freshness)
    assert rep.feature("c7")["abs_diff_max"] == 8.0
    assert fmt("abs_diff_max", s7["abs_diff_max"]) == "5.551115123125783e-17"
    assert fmt("served", 0.1 + 0.2) == "0.30000000000000004"
    assert fmt("mismatches", 30560.0) == "30560" and fmt("late_data", 3056) == "3056"
    assert fmt("mismatch_rate", 1 / 6) == "16.67%" and fmt("abs_diff_max", None) == "—"


def test_page_headline_freshness_and_exact_samples():
    rep = _report(
        FS,
        freshness=[
            {
                "feature_set": "t",
                "source": "t",
                "training_mode": "known_at",
                "rows": 6,
                "rows_in_flight": 2,
                "lag_s": lag_quantiles(np.array([900.0, 900.0, 129_600.0])),
                "late_data": {"c7": 1, "s7": 2, "m": 0},
            }
        ],
    )
    page = render(rep, pd.DataFrame())
    assert "<b>2</b> of 6 logged rows (33.33%) differ on at\nleast one feature; 2 of 18 (row, feature)" in page
    assert "<b>Freshness</b> (not skew): 2 rows, 3 values differ" in page
    skew, fresh = page.split("<h2>Freshness")
    assert "5.551115123125783e-17" in skew and "0.30000000000000004" in skew  # the mismatching row, exactly
    assert ">late_data<" not in skew.split("<h2>Training-serving skew</h2>")[1]  # no late_data column or sample
    assert "<td>1 d 12 h 00 min</td>" not in fresh and "1 d 12 h 00 min" in fresh and "15 min 00 s" in fresh
    assert "late_<wbr>data (rows)" in fresh


def test_lag_quantiles():
    q = lag_quantiles(np.arange(101) * 60.0)  # 0, 1, ..., 100 minutes
    assert q == {"events": 101, "min": 0.0, "p50": 3000.0, "p90": 5400.0, "p99": 5940.0, "max": 6000.0}
    assert lag_quantiles(np.array([]))["events"] == 0


# ----------------------------------------------------------------------------- drift levels, old champion


def test_drift_major_alerts_moderate_warns():
    stats = [{"feature": "a", "psi": 0.3}, {"feature": "b", "psi": 0.15}, {"feature": "c", "psi": 0.05}]
    stats.append({"feature": "d", "psi": None})
    alerts, warnings = drift_findings(stats, 0.25, 0.1)
    assert alerts == ["a: psi=0.3000 >= 0.25 (major drift)"]
    assert warnings == ["b: moderate drift, psi=0.1500 >= 0.1 (major at 0.25)"]
    # a model's own levels
    assert drift_findings(stats, 0.5, 0.2) == ([], ["a: moderate drift, psi=0.3000 >= 0.2 (major at 0.5)"])
    assert drift_level(0.1) == "moderate" and drift_level(0.0999) == "stable" and drift_level(0.25) == "major"


def test_drift_and_warning_alerts_are_written_with_their_level(tmp_path):
    from jobs.config import Config

    cfg = Config(lake_root=str(tmp_path / "lake"))
    _alert(
        cfg,
        "skew ds=D: major drift on 1 feature(s): a: psi=0.3000 >= 0.25 (major drift)",
        ds="D",
        failed=["a: psi=0.3000 >= 0.25 (major drift)"],
        what="major drift",
    )
    _alert(cfg, "skew ds=D: 1 warning(s): b: moderate drift, psi=0.1500", ds="D", level="warning")
    lines = [json.loads(x) for x in (tmp_path / "lake" / "_alerts" / "alerts.jsonl").read_text().splitlines()]
    assert [(x["level"], x["what"]) for x in lines] == [("error", "major drift"), ("warning", "skew warning")]
    assert lines[0]["failed"] == ["a: psi=0.3000 >= 0.25 (major drift)"]
    assert lines[0]["title"] == "major drift of served features, ds=D"
    assert "b: moderate drift, psi=0.1500" in lines[1]["reason"]


def test_old_champion_is_noted_with_its_age_in_days():
    from jobs.serving.model import LinearModel, StaticSource

    m = LinearModel("m", "3", "fp", ("c7",))
    src = StaticSource(m, windows={("m", "3"): ("1997-01-06", "1997-02-24")})
    notes = []
    champ, info = _champion(src, notes, "1997-04-10")
    assert champ is m and notes == []
    assert info == {"name": "m", "version": "3", "train_end": "1997-02-24", "age_days": 45}
    assert champion_age(info, "1997-04-10", 30) == (
        "champion m v3 was trained on data up to 1997-02-24: 45 days before the served day 1997-04-10 (more than 30)"
    )
    assert champion_age(info, "1997-04-10", 45) is None  # 45 days is not more than 45
    _, unknown = _champion(StaticSource(m), notes, "1997-04-10")
    assert unknown["age_days"] is None and notes == ["champion m v3: training window unknown, its age not checked"]


def test_model_drift_levels_are_checked():
    from features.model import Model
    from features.projects.cdnow.repurchase_90d import REPURCHASE_90D as M

    assert (M.drift_psi_moderate, M.drift_psi, M.champion_max_age_days) == (0.1, 0.25, 30.0)
    with pytest.raises(ValueError, match="drift_psi_moderate"):
        Model(M.name, M.queries, M.label, M.joins, drift_psi=0.2, drift_psi_moderate=0.3)
