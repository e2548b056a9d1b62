"""A feature set whose windows are all bounded reads only the raw days a window can reach
(``jobs.engines.join.history_start``): its snapshots, joins and range builds read — and require
validated — the days from ``as_of - longest window`` on, not the whole table, with the very values a
read of the whole history gives (a snapshot lists the entities with an event in those days: the
others' rows would be all defaults). On real flights: ``plane_recent_v1`` (6 h / 24 h / 7 d windows)
over 20 landed days of which only the last 11 are validated."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from features import kernel
from jobs import engines
from jobs.config import Config
from jobs.engines.join import as_of_bounds, events_range, history_start, join_features
from jobs.ingest.landing import land
from jobs.lake import UnvalidatedPartitionError
from jobs.quality.validate import validate_range
from jobs.snapshots import SNAPSHOT_MODE, build_snapshot, build_snapshot_range, cutoff, snapshot_table

LANDED = ("2013-01-01", "2013-01-20")
VALIDATED = ("2013-01-10", "2013-01-20")
SET = "plane_recent_v1"


@pytest.fixture(scope="module")
def flights(tmp_path_factory):
    cfg = Config(lake_root=str(tmp_path_factory.mktemp("bounded") / "lake"))
    land(cfg, "flights", *LANDED)
    validate_range(cfg, "raw_events", *VALIDATED, source="flights", alert=False, docs=False)
    fs = cfg.repo().feature_set(SET)
    raw = cfg.lake().table(fs.source.table)
    return cfg, fs, raw, raw.read(*LANDED, columns=list(fs.event_columns))


def sorted_rows(frame: pd.DataFrame, fs) -> pd.DataFrame:
    return frame.sort_values(fs.entity, ignore_index=True)


def test_history_start_is_the_longest_window_before_the_query(flights):
    _, fs, _, _ = flights
    assert fs.horizon_days == 7
    assert history_start(fs, pd.Timestamp("2013-01-21 00:00", tz="UTC")) == "2013-01-14"
    assert history_start(fs, pd.Timestamp("2013-01-21 05:30", tz="UTC")) == "2013-01-14"
    assert history_start(fs, None) is None


def test_a_snapshot_reads_and_requires_only_the_days_its_windows_reach(flights):
    cfg, fs, raw, events = flights
    m = build_snapshot(cfg, "2013-01-20", SET)  # days 01-01..01-09 are landed, not validated
    (key,) = m.inputs
    assert key == f"{raw.name}/ds=2013-01-14..2013-01-20"
    got = sorted_rows(snapshot_table(cfg.lake(), fs).read("2013-01-20"), fs)
    # the same rows as the kernel over the whole landed history at the snapshot's cut-off
    whole = pd.concat(
        list(engines.run(cfg, fs, raw.files(*LANDED), engines.Snapshot(cutoff("2013-01-20")), SNAPSHOT_MODE)),
        ignore_index=True,
    )
    whole = sorted_rows(whole[got.columns], fs)
    # the planes with an event in the days read: exactly their rows of the whole-history snapshot
    kept = whole[whole[fs.entity].isin(got[fs.entity])].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, kept)
    assert len(got) > 1000 and got[fs.feature_names[0]].sum() > 0
    # the planes left out were seen only before the longest window: every feature at its declared default,
    # which is what a reader of the snapshot (materialized serving, the skew job) gives an absent entity
    dropped = whole[~whole[fs.entity].isin(got[fs.entity])]
    assert len(dropped) > 100
    for f in fs.features:
        col = dropped[f.name]
        assert col.isna().all() if f.default is None or f.default != f.default else (col == f.default).all(), f.name


def test_a_window_reaching_an_unvalidated_day_is_refused_naming_those_days(flights):
    cfg, _, raw, _ = flights
    with pytest.raises(UnvalidatedPartitionError) as exc:
        build_snapshot(cfg, "2013-01-12", SET)  # reads 2013-01-06.. : 01-06..01-09 are not validated
    assert exc.value.table == raw.name
    assert exc.value.days == ["2013-01-06", "2013-01-07", "2013-01-08", "2013-01-09"]


def test_a_range_build_names_each_days_own_inputs_as_its_single_build(flights):
    cfg, _, _, _ = flights
    singles = {d: build_snapshot(cfg, d, SET) for d in ("2013-01-17", "2013-01-18", "2013-01-19")}
    ranged = build_snapshot_range(cfg, "2013-01-17", "2013-01-19", SET, validate=False)
    assert [(m.ds, m.inputs, m.content_fingerprint) for m in ranged] == [
        (d, m.inputs, m.content_fingerprint) for d, m in singles.items()
    ]
    assert [next(iter(m.inputs)).split("/ds=")[1] for m in ranged] == [
        "2013-01-11..2013-01-17",
        "2013-01-12..2013-01-18",
        "2013-01-13..2013-01-19",
    ]


@pytest.mark.parametrize("mode", ["known_at", "as_of"])
def test_a_join_of_late_queries_equals_the_kernel_over_the_whole_history(flights, mode):
    cfg, fs, raw, events = flights
    model = cfg.repo().model("dep_delay_15")
    late = raw.read("2013-01-19", "2013-01-20")
    late = late[late[fs.timestamp] >= pd.Timestamp("2013-01-19", tz="UTC")].head(400)
    queries = pd.DataFrame(
        {
            "flight_id": late["flight_id"].to_numpy(),
            "tailnum": late[fs.entity].to_numpy(),
            "origin": late["origin"].to_numpy(),
            "as_of": late[fs.timestamp].to_numpy(),
        }
    )
    lo, hi = as_of_bounds(cfg, queries)
    assert events_range(cfg, fs, mode, hi, as_of_min=lo)[0] == history_start(fs, lo) == "2013-01-12"
    want = kernel.compute(events, queries[["tailnum", "as_of"]].rename(columns={"tailnum": fs.entity}), fs, mode)
    # only plane_recent_v1 of the model: the other two sets read other sources
    one_set = dataclasses.replace(model, joins=tuple(j for j in model.joins if j.feature_set.name == SET))
    got = pd.concat(list(join_features(cfg, one_set, queries, modes=mode)), ignore_index=True)
    got = got.sort_values(["flight_id"], ignore_index=True)
    want = want.assign(flight_id=queries["flight_id"]).sort_values(["flight_id"], ignore_index=True)
    for name in fs.feature_names:
        pd.testing.assert_series_equal(got[name], want[name], check_names=False)


def test_a_bounded_sets_snapshot_may_lose_rows_but_not_collapse(flights):
    from jobs.quality.validate import load_suite

    cfg, fs, _, _ = flights

    def floor(feature_set):
        (rule,) = [
            e for e in load_suite("feature_snapshots", feature_set).expectations if "previous_rows" in str(e["kwargs"])
        ]
        return rule["kwargs"]["min_value"]

    assert floor(fs) == {"$PARAMETER": "previous_rows * 0.5"}
    assert floor(cfg.repo().feature_set("customer_activity_v1")) == {"$PARAMETER": "previous_rows"}
    # each day through the gate, as features_daily does: some days have fewer planes in the window
    # (2008, 2023, 2011, ...: the old floor, previous_rows, would quarantine them), never half as many
    built = build_snapshot_range(cfg, "2013-01-16", "2013-01-20", SET)
    rows = [m.rows for m in built]
    assert min(b / a for a, b in zip(rows, rows[1:], strict=False)) < 1 < max(rows) / min(rows) < 2
    assert all(snapshot_table(cfg.lake(), fs).validated(m.ds) for m in built)
