"""Exact values of the kernel on tiny hand-built frames (DESIGN §1 semantics)."""

import math

import numpy as np
import pandas as pd
import pytest

from features.kernel import compute, output_columns, snapshot_queries, to_us
from features.registry import get as get_set
from features.spec import Feature, FeatureSet, agg, count, ratio

DAY = pd.Timedelta(days=1)
T0 = pd.Timestamp("2024-03-10", tz="UTC")

FS = FeatureSet(
    name="t_v1",
    entity="user",
    features=(
        count("n_7d", 7),
        agg("sum_7d", "sum", "x", 7),
        agg("mean_7d", "mean", "x", 7),
        agg("min_7d", "min", "x", 7),
        agg("max_7d", "max", "x", 7),
        agg("cats_7d", "distinct_count", "cat", 7),
        count("n_all", None),
        Feature("last_days", "days_since_last"),
        Feature("first_days", "days_since_first"),
        Feature("last_days_7d", "days_since_last", window_days=7),
        ratio("sum_per_n", "sum_7d", "n_7d"),
    ),
)


def events(*rows):
    """rows: (event_id, user, event_ts, ingested_at or None (= event_ts), x, cat)."""
    recs = []
    for eid, user, ts, ing, x, cat in rows:
        recs.append(
            {
                "event_id": eid,
                "user": user,
                "event_ts": ts,
                "ingested_at": ts if ing is None else ing,
                "x": x,
                "cat": cat,
            }
        )
    df = pd.DataFrame(recs, columns=["event_id", "user", "event_ts", "ingested_at", "x", "cat"])
    for c in ("event_ts", "ingested_at"):
        df[c] = pd.to_datetime(df[c], utc=True)
    df["x"] = df["x"].astype("float64")
    return df


def queries(*rows):
    return pd.DataFrame({"user": [r[0] for r in rows], "as_of": pd.to_datetime([r[1] for r in rows], utc=True)})


def one(ev, t, mode="known_at", user=1, fs=FS):
    return compute(ev, queries((user, t)), fs, mode).iloc[0]


def test_window_boundaries_event_at_t_excluded_event_at_t_minus_w_included():
    ev = events(
        (1, 1, T0 - 7 * DAY, None, 1.0, "a"),  # exactly t - w: included
        (2, 1, T0 - 7 * DAY - pd.Timedelta(microseconds=1), None, 2.0, "a"),  # just outside
        (3, 1, T0 - pd.Timedelta(microseconds=1), None, 4.0, "b"),  # just before t: included
        (4, 1, T0, None, 8.0, "c"),  # at t: excluded
    )
    r = one(ev, T0, mode="as_of")
    assert r["n_7d"] == 2
    assert r["sum_7d"] == 5.0
    assert r["mean_7d"] == 2.5
    assert (r["min_7d"], r["max_7d"]) == (1.0, 4.0)
    assert r["cats_7d"] == 2
    assert r["n_all"] == 3
    assert r["last_days"] == 1 / 86_400_000_000
    assert r["first_days"] == (7 * 86_400_000_000 + 1) / 86_400_000_000
    assert r["sum_per_n"] == 2.5


def test_nulls_count_in_count_but_not_in_other_aggregates():
    ev = events(
        (1, 1, T0 - 2 * DAY, None, np.nan, None),
        (2, 1, T0 - 1 * DAY, None, 3.0, "a"),
    )
    r = one(ev, T0)
    assert r["n_7d"] == 2
    assert r["sum_7d"] == 3.0
    assert r["mean_7d"] == 3.0  # one non-null value
    assert r["min_7d"] == r["max_7d"] == 3.0
    assert r["cats_7d"] == 1  # a null category is not a category


def test_window_with_only_null_values_gives_declared_defaults():
    ev = events((1, 1, T0 - DAY, None, np.nan, None))
    r = one(ev, T0)
    assert r["n_7d"] == 1
    assert r["sum_7d"] == 0.0  # sum default
    assert math.isnan(r["mean_7d"]) and math.isnan(r["min_7d"]) and math.isnan(r["max_7d"])
    assert r["cats_7d"] == 0


def test_empty_window_and_unknown_entity_give_defaults():
    ev = events((1, 1, T0 - 30 * DAY, None, 5.0, "a"))
    r = one(ev, T0)
    assert (r["n_7d"], r["sum_7d"], r["cats_7d"]) == (0, 0.0, 0)
    assert math.isnan(r["mean_7d"]) and math.isnan(r["last_days_7d"]) and math.isnan(r["sum_per_n"])
    assert r["n_all"] == 1 and r["last_days"] == 30.0
    stranger = one(ev, T0, user=99)
    assert stranger["n_all"] == 0 and math.isnan(stranger["last_days"]) and stranger["sum_7d"] == 0.0


def test_declared_non_standard_default_is_used():
    fs = FeatureSet("d_v1", "user", (agg("mx", "max", "x", 7, default=-1.0), count("c", 7, default=0)))
    r = one(events((1, 1, T0 - 30 * DAY, None, 5.0, "a")), T0, fs=fs)
    assert r["mx"] == -1.0 and r["c"] == 0


def test_duplicate_event_ids_keep_the_earliest_ingested_copy():
    ev = events(
        (7, 1, T0 - 3 * DAY, T0 + DAY, 100.0, "late-copy"),  # re-delivery after t
        (7, 1, T0 - 3 * DAY, T0 - 3 * DAY, 1.0, "a"),  # original
        (8, 1, T0 - 2 * DAY, T0 - 2 * DAY, 2.0, "a"),
        (8, 1, T0 - 2 * DAY, T0 - 1 * DAY, 2.0, "a"),  # duplicate ingested later, before t
    )
    for mode in ("known_at", "as_of"):
        r = one(ev, T0, mode)
        assert r["n_7d"] == 2 and r["sum_7d"] == 3.0 and r["cats_7d"] == 1


def test_duplicates_resolve_the_same_whatever_the_input_order():
    ev = events(
        (5, 1, T0 - 3 * DAY, T0 - 2 * DAY, 1.0, "a"),
        (5, 1, T0 - 3 * DAY, T0 - 2 * DAY, 9.0, "b"),  # same ingested_at, different content
    )
    a = one(ev, T0)
    b = one(ev.iloc[::-1].reset_index(drop=True), T0)
    pd.testing.assert_series_equal(a, b)


def test_late_event_counts_as_of_but_not_known_at():
    ev = events(
        (1, 1, T0 - 2 * DAY, T0 - 2 * DAY, 1.0, "a"),
        (2, 1, T0 - 1 * DAY, T0 + 3 * DAY, 10.0, "b"),  # happened before t, arrived after
    )
    known = one(ev, T0, "known_at")
    asof = one(ev, T0, "as_of")
    assert (known["n_7d"], known["sum_7d"], known["last_days"]) == (1, 1.0, 2.0)
    assert (asof["n_7d"], asof["sum_7d"], asof["last_days"]) == (2, 11.0, 1.0)
    # ingested exactly at t is not yet known at t
    ev2 = events((1, 1, T0 - DAY, T0, 1.0, "a"))
    assert one(ev2, T0, "known_at")["n_7d"] == 0
    assert one(ev2, T0 + pd.Timedelta(microseconds=1), "known_at")["n_7d"] == 1


def test_ties_on_event_ts_are_ordered_by_event_id_for_first_and_last():
    ts = T0 - DAY
    ev = events((20, 1, ts, None, 1e16, "a"), (10, 1, ts, None, 1.0, "a"), (30, 1, ts, None, -1e16, "a"))
    r = one(ev, T0)
    # Sequential accumulation in event_id order: (1.0 + 1e16) - 1e16 = 0.0 (1.0 is absorbed);
    # any other order would give 1.0 or 0.0 differently; the kernel's order is fixed.
    assert r["sum_7d"] == (0.0 + 1.0 + 1e16) + -1e16
    shuffled = one(ev.sample(frac=1, random_state=3).reset_index(drop=True), T0)
    assert shuffled["sum_7d"] == r["sum_7d"]


def test_several_entities_and_queries_keep_query_order_and_extra_columns():
    ev = events(
        (1, 1, T0 - 1 * DAY, None, 1.0, "a"),
        (2, 2, T0 - 2 * DAY, None, 2.0, "a"),
        (3, 1, T0 - 10 * DAY, None, 4.0, "b"),
    )
    q = queries((2, T0), (1, T0), (1, T0 - 5 * DAY), (3, T0))
    q["request_id"] = ["r1", "r2", "r3", "r4"]
    out = compute(ev, q, FS)
    assert list(out["request_id"]) == ["r1", "r2", "r3", "r4"]
    assert list(out["n_all"]) == [1, 2, 1, 0]
    assert list(out["sum_7d"]) == [2.0, 1.0, 4.0, 0.0]  # t-5d sees the event at t-10d
    assert list(out.columns[:3]) == ["user", "as_of", "request_id"]
    assert str(out["as_of"].dtype) == "datetime64[us, UTC]"


def test_naive_and_other_unit_timestamps_are_utc_microseconds():
    ev = events((1, 1, T0 - DAY, None, 1.0, "a"))
    naive = ev.copy()
    naive["event_ts"] = naive["event_ts"].dt.tz_localize(None).astype("datetime64[ns]")
    naive["ingested_at"] = naive["ingested_at"].dt.tz_convert("America/New_York")
    pd.testing.assert_frame_equal(compute(ev, queries((1, T0)), FS), compute(naive, queries((1, T0)), FS))
    assert to_us(pd.Series(pd.to_datetime(["1970-01-01 00:00:00.0000019"], utc=True)))[0] == 1


def test_empty_inputs_give_typed_empty_output():
    ev = events()
    out = compute(ev, queries(), FS)
    assert len(out) == 0 and list(out.columns) == ["user", "as_of", *FS.feature_names]
    r = one(ev, T0)
    assert r["n_7d"] == 0 and math.isnan(r["last_days"])


def test_missing_columns_and_null_timestamps_are_clear_errors():
    ev = events((1, 1, T0 - DAY, None, 1.0, "a"))
    with pytest.raises(KeyError, match=r"events frame is missing column\(s\) \['x'\]"):
        compute(ev.drop(columns=["x"]), queries((1, T0)), FS)
    bad = ev.copy()
    bad.loc[0, "event_ts"] = pd.NaT
    with pytest.raises(ValueError, match="events.event_ts: 1 null timestamp"):
        compute(bad, queries((1, T0)), FS)
    with pytest.raises(ValueError, match="mode must be one of"):
        compute(ev, queries((1, T0)), FS, mode="now")


def test_snapshot_queries_are_entities_visible_at_the_cutoff():
    ev = events(
        (1, 1, T0 - DAY, None, 1.0, "a"),
        (2, 2, T0 - DAY, T0 + DAY, 1.0, "a"),  # late: invisible known_at
        (3, 3, T0, None, 1.0, "a"),  # at the cutoff: invisible
    )
    assert list(snapshot_queries(ev, FS, T0)["user"]) == [1]
    assert list(snapshot_queries(ev, FS, T0, mode="as_of")["user"]) == [1, 2]
    assert (snapshot_queries(ev, FS, T0)["as_of"] == T0).all()


def test_output_columns_match_compute_dtypes():
    ev = events((1, 1, T0 - DAY, None, 1.0, "a"))
    out = compute(ev, queries((1, T0)), FS)
    cols = dict(output_columns(FS))
    for f in FS.features:
        assert cols[f.name] == ("int64" if out[f.name].dtype == np.int64 else "double")


@pytest.mark.parametrize("knob, value", [("PACK_LIMIT", 0)])
def test_rank_keys_do_not_change_results(monkeypatch, knob, value):
    rng = np.random.default_rng(1)
    n = 3000
    ev = events(
        *[
            (
                i,
                int(rng.integers(0, 30)),
                T0 - pd.Timedelta(seconds=int(rng.integers(0, 20 * 86400))),
                None,
                float(rng.normal()),
                str(rng.integers(0, 4)),
            )
            for i in range(n)
        ]
    )
    q = queries(*[(u, T0 - pd.Timedelta(hours=h)) for u in range(30) for h in (0, 30, 100)])
    whole = compute(ev, q, FS)
    import features.kernel as k

    monkeypatch.setattr(k, knob, value)
    pd.testing.assert_frame_equal(whole, compute(ev, q, FS), check_exact=True)


def test_string_keys_hour_windows_and_events_without_the_key():
    """A nullable string key: keyless events belong to no entity; a keyless query gets the defaults."""
    fs = FeatureSet("planes_v1", "tailnum", (count("n_2h", 2 / 24), agg("delay_max_2h", "max", "delay", 2 / 24)))
    t0 = pd.Timestamp("2013-03-10 06:00", tz="UTC")
    events = pd.DataFrame(
        {
            "event_id": ["a", "b", "c", "d"],
            "tailnum": pd.array(["N1", "N1", None, "N2"], dtype="str"),
            "event_ts": [t0 - pd.Timedelta(minutes=m) for m in (30, 150, 10, 60)],
            "delay": [5.0, 50.0, 99.0, 7.0],
        }
    )
    events["ingested_at"] = events["event_ts"] + pd.Timedelta(minutes=15)
    queries = pd.DataFrame({"tailnum": pd.array(["N1", "N2", None, "N9"], dtype="str"), "as_of": [t0] * 4})
    out = compute(events, queries, fs)
    assert out["n_2h"].tolist() == [1, 1, 0, 0]  # b is 150 min old; c has no plane
    assert out["delay_max_2h"].tolist()[:2] == [5.0, 7.0] and out["delay_max_2h"].isna().tolist()[2:] == [True, True]
    snap = snapshot_queries(events, fs, t0)
    assert snap["tailnum"].tolist() == ["N1", "N2"]


WARM_SCRIPT = """
import json
import features.kernel as k
from features.registry import get

loops = ("_scan_values", "_scan_count", "_scan_edge", "_scan_distinct", "_radix_argsort")
before = {n: len(getattr(k, n).signatures) for n in loops}
k.warm(get("customer_activity_v1"))
print(json.dumps([before, {n: len(getattr(k, n).signatures) for n in loops}]))
"""


def test_warm_loads_the_loops_a_set_uses_in_a_fresh_process():
    """``warm`` (what the service runs at start, before any request) leaves a compiled specialisation
    of every loop ``customer_activity_v1``'s features use; none is loaded before it."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", WARM_SCRIPT], capture_output=True, text=True, check=True, timeout=300)
    before, after = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(before.values()) == {0}
    aggs = {f.agg for f in get_set("customer_activity_v1").features}
    used = {"_radix_argsort"}  # the index's sorts
    used |= {"_scan_count"} if "count" in aggs else set()  # counts in known_at mode
    used |= {"_scan_edge"} if aggs & {"days_since_last", "days_since_first"} else set()
    used |= {"_scan_values"} if aggs & {"sum", "mean", "min", "max"} else set()
    used |= {"_scan_distinct"} if "distinct_count" in aggs else set()
    assert {n for n, c in after.items() if c} == used
