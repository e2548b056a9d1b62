"""The served joined vector of ``dep_delay_15`` (three sets, two sources, string keys, a nullable
key) on real 2013 NYC flights: the fan-out (one slow set, one failing set, materialized per set),
per-model logs, and skew per set on a replayed day against a registered LightGBM champion.

One lake (module scope): the timetable, flights and weather landed for January 1-19, labels and
training sets for the cut-offs of January 2-15, a LightGBM champion trained on January 2-10 (valid
11-12, holdback 13-15) and promoted; the served day is January 16.
"""

from __future__ import annotations

import dataclasses
import time

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from features.online import compute_one
from features.repo import Repo
from jobs.config import Config
from jobs.serving.app import Settings, create_app, kernel_hook
from jobs.serving.log import degraded_sets, model_wal_dir, publish, read_wal
from jobs.serving.model import LinearModel, StaticSource
from jobs.serving.replay import plan_day, replay
from jobs.serving.store import EmbeddedStore, StoreUnavailable, read_lake_events
from jobs.skew.causes import CAUSES

MODEL = "dep_delay_15"
DAY = "2013-01-16"
SNAP_DAY = "2013-01-15"
SETS = ("plane_recent_v1", "origin_congestion_v1", "origin_weather_v1")


@pytest.fixture(scope="module")
def flake(tmp_path_factory):
    from jobs.ingest.landing import land
    from jobs.models.registry import Registry
    from jobs.snapshots import build_snapshot
    from jobs.training.labels import build_labels, cutoffs_in
    from jobs.training.spec import TrainSpec
    from jobs.training.trainer import train_model
    from jobs.training.training_set import build_training_set

    cfg = Config(lake_root=str(tmp_path_factory.mktemp("flights") / "lake"))
    decl = cfg.repo().model(MODEL)
    land(cfg, "flight_schedule", "2012-12-25", "2013-01-19")
    land(cfg, "flights", "2013-01-01", "2013-01-19")
    land(cfg, "weather", "2013-01-01", "2013-01-19")
    days = cutoffs_in(decl, "2013-01-02", "2013-01-15")
    build_labels(cfg, MODEL, days, allow_unvalidated=True)
    for d in days:
        build_training_set(cfg, MODEL, d, allow_unvalidated=True)
    spec = TrainSpec(
        train=("2013-01-02", "2013-01-10"),
        valid=("2013-01-11", "2013-01-12"),
        holdback=("2013-01-13", "2013-01-15"),
        model_name=MODEL,
    )
    train_model(cfg, spec, baseline=False)
    Registry.from_config(cfg).promote(MODEL)
    build_snapshot(cfg, SNAP_DAY, "origin_weather_v1", allow_unvalidated=True)
    return cfg


@pytest.fixture(scope="module")
def plan(flake):
    decl = flake.repo().model(MODEL)
    raw = flake.lake().table(decl.queries.source.table)
    return plan_day(raw.read(raw.first_ds(), raw.last_ds()), DAY, model=decl)


def linear(decl) -> StaticSource:
    return StaticSource(LinearModel(MODEL, "1", decl.fingerprint, decl.feature_names))


class SlowStore:
    """A store that answers after ``delay_s`` (a blocked Redis, a saturated network)."""

    def __init__(self, inner: EmbeddedStore, delay_s: float):
        self.inner, self.fs, self.delay_s = inner, inner.fs, delay_s

    def history(self, entity_id):
        time.sleep(self.delay_s)
        return self.inner.history(entity_id)


class FailingStore:
    def __init__(self, fs):
        self.fs = fs

    def history(self, entity_id):
        raise StoreUnavailable("store_error", "connection refused")


def _serve(cfg, tmp_path, rows, *, source=None, store=None, hook=None, name="wal", **settings):
    decl = cfg.repo().model(MODEL)
    s = Settings(lake_root=cfg.lake_root, model=MODEL, wal_dir=str(tmp_path / name), refresh_s=0.0, **settings)
    app = create_app(s, model_source=source or linear(decl), store=store, hook=hook, cfg=cfg)
    with TestClient(app) as c:
        res = replay(c, rows)
        metrics = c.get("/metrics.json").json()
    assert (res.status == 200).all(), res.status.value_counts()
    logged = read_wal(model_wal_dir(tmp_path / name, decl), decl).set_index("request_id").loc[rows.request_id]
    return logged, metrics


def _kernel(cfg, fs, key, t) -> dict:
    ev = read_lake_events(cfg, fs)
    return compute_one(ev[ev[fs.entity] == key], key, t, fs, "known_at") if key is not None else None


def test_the_three_sets_are_served_on_their_keys_and_a_null_tailnum_gets_the_plane_defaults(flake, plan, tmp_path):
    decl = flake.repo().model(MODEL)
    rows = pd.concat([plan[plan.tailnum.isna()].head(2), plan[plan.tailnum.notna()].head(3)], ignore_index=True)
    assert len(rows) == 5
    logged, m = _serve(flake, tmp_path, rows)
    plane, congestion, weather = (j.feature_set for j in decl.joins)
    for r in rows.itertuples():
        got = logged.loc[r.request_id]
        t = pd.Timestamp(r.request_time)
        for fs, key in ((plane, r.tailnum), (congestion, r.origin), (weather, r.origin)):
            want = _kernel(flake, fs, None if pd.isna(key) else key, t)
            if want is None:  # no tailnum: the declared defaults, not a degradation
                want = {f.name: f.default for f in fs.features}
            assert {n: (None if pd.isna(got[n]) else got[n]) for n in fs.feature_names} == pytest.approx(want)
    assert not logged.degraded.any()
    assert set(m["feature_sets"]) == set(SETS)
    assert all(v["requests"] == 5 and v["degraded"] == 0 and v["offloaded"] == 0 for v in m["feature_sets"].values())


def test_one_slow_set_costs_its_timeout_not_the_request_and_the_row_names_it(flake, plan, tmp_path):
    decl = flake.repo().model(MODEL)
    rows = plan[plan.tailnum.notna()].head(20).reset_index(drop=True)
    weather = decl.joins[2].feature_set
    good, _ = _serve(flake, tmp_path, rows, name="good", cache_ttl_s=0.0)
    slow = SlowStore(EmbeddedStore.from_lake(flake, weather), 0.3)
    logged, m = _serve(
        flake, tmp_path, rows, store={weather.name: slow}, name="slow", cache_ttl_s=0.0, store_timeout_ms=40.0
    )
    assert logged.degraded.all()
    assert set(logged.degraded_reason) == {"origin_weather_v1:store_timeout"}
    assert {degraded_sets(r, decl) for r in logged.degraded_reason} == {("origin_weather_v1",)}
    # the slow set waited its timeout, the typical request no more than that plus the other two sets
    # (measured on the healthy run) plus scheduling slack; none came near the store's 300 ms (a
    # request held by the slow set). Measured at load ~6 on 2 shared cores: p50 41.3 ms, max 72 ms.
    rest = good.latency_ms.median()
    assert (logged.latency_ms >= 40.0).all()
    assert logged.latency_ms.median() <= 40.0 + rest + 10.0, (rest, logged.latency_ms.describe())
    assert logged.latency_ms.max() < 150.0, logged.latency_ms.describe()
    others = [n for j in decl.joins[:2] for n in j.feature_set.feature_names]
    pd.testing.assert_frame_equal(logged[others], good[others])
    defaults = {f.name: (f.default if f.default is not None else None) for f in weather.features}
    for n, v in defaults.items():
        assert (logged[n].isna() if v is None else logged[n] == v).all(), n
    fm = m["feature_sets"]
    assert fm["origin_weather_v1"]["timeouts"] == 20 and fm["origin_weather_v1"]["degraded"] == 20
    assert fm["origin_weather_v1"]["offloaded"] == 20 and fm["origin_weather_v1"]["timeout_ms"] == 40.0
    assert fm["plane_recent_v1"]["degraded"] == 0 and fm["origin_congestion_v1"]["degraded"] == 0
    assert m["store_timeouts"] == 20 and m["degraded"] == 20


def test_a_join_timeout_is_that_sets_own(flake, plan, tmp_path, monkeypatch):
    decl = flake.repo().model(MODEL)
    joins = list(decl.joins)
    joins[2] = dataclasses.replace(joins[2], timeout_ms=15.0)
    mine = dataclasses.replace(decl, joins=tuple(joins))
    monkeypatch.setattr(Repo, "model", lambda self, name: mine)
    rows = plan[plan.tailnum.notna()].head(10).reset_index(drop=True)
    weather = decl.joins[2].feature_set
    slow = SlowStore(EmbeddedStore.from_lake(flake, weather), 0.2)
    logged, m = _serve(
        flake,
        tmp_path,
        rows,
        source=linear(mine),
        store={weather.name: slow},
        cache_ttl_s=0.0,
        store_timeout_ms=1000.0,
    )
    assert set(logged.degraded_reason) == {"origin_weather_v1:store_timeout"}
    assert (logged.latency_ms < 200).all()
    assert m["feature_sets"]["origin_weather_v1"]["timeout_ms"] == 15.0
    assert m["feature_sets"]["plane_recent_v1"]["timeout_ms"] == 1000.0


def test_one_failing_set_degrades_only_itself(flake, plan, tmp_path):
    decl = flake.repo().model(MODEL)
    rows = plan[plan.tailnum.notna()].head(10).reset_index(drop=True)
    plane = decl.joins[0].feature_set
    good, _ = _serve(flake, tmp_path, rows, name="good")
    logged, m = _serve(flake, tmp_path, rows, store={plane.name: FailingStore(plane)}, name="bad")
    assert set(logged.degraded_reason) == {"plane_recent_v1:store_error"}
    others = [n for j in decl.joins[1:] for n in j.feature_set.feature_names]
    pd.testing.assert_frame_equal(logged[others], good[others])
    assert (logged["dep_count_24h" if "dep_count_24h" in plane.feature_names else plane.feature_names[0]] == 0).all()
    assert m["feature_sets"]["plane_recent_v1"]["errors"] == 10
    assert m["feature_sets"]["origin_weather_v1"]["errors"] == 0 and m["store_errors"] == 10


def test_materialized_per_set(flake, plan, tmp_path, monkeypatch):
    from jobs.snapshots import snapshot_table

    decl = flake.repo().model(MODEL)
    joins = list(decl.joins)
    joins[2] = dataclasses.replace(joins[2], mode="materialized")
    mine = dataclasses.replace(decl, joins=tuple(joins))
    monkeypatch.setattr(Repo, "model", lambda self, name: mine)
    rows = plan[plan.tailnum.notna()].head(10).reset_index(drop=True)
    good, _ = _serve(flake, tmp_path, rows, source=linear(mine), name="fresh_all")
    monkeypatch.undo()
    monkeypatch.setattr(Repo, "model", lambda self, name: mine)
    logged, m = _serve(flake, tmp_path, rows, source=linear(mine), name="mat")
    weather = decl.joins[2].feature_set
    snap = snapshot_table(flake.lake(), weather).read(SNAP_DAY).set_index("origin")
    for r in rows.itertuples():
        got = logged.loc[r.request_id]
        want = snap.loc[r.origin, list(weather.feature_names)]
        assert (
            got[list(weather.feature_names)].astype(float).fillna(-1).tolist() == want.astype(float).fillna(-1).tolist()
        )
    assert set(logged.snapshot_ds) == {SNAP_DAY} and set(logged["mode"]) == {"fresh"}
    assert m["feature_sets"]["origin_weather_v1"]["mode"] == "materialized"
    assert m["feature_sets"]["plane_recent_v1"]["mode"] is None


def _local_time_weather(events, entity_id, request_time, fs):
    """The wrong serving path: the weather set's window ends at the New York wall-clock time read as
    UTC (5 hours early in January); the other sets as the kernel computes them."""
    if fs.name == "origin_weather_v1":
        request_time = request_time.tz_convert("America/New_York").tz_localize(None).tz_localize("UTC")
    return kernel_hook(events, entity_id, request_time, fs)


def _replay_and_skew(cfg, plan, tmp_path, name, hook=None):
    from jobs.serving.model import RegistrySource
    from jobs.skew.job import run_skew

    decl = cfg.repo().model(MODEL)
    source = RegistrySource(cfg, MODEL)
    s = Settings(lake_root=cfg.lake_root, model=MODEL, wal_dir=str(tmp_path / name), refresh_s=0.0)
    with TestClient(create_app(s, model_source=source, hook=hook, cfg=cfg)) as c:
        res = replay(c, plan)
    assert (res.status == 200).all()
    assert publish(cfg, model_wal_dir(tmp_path / name, decl), decl, DAY).rows == len(plan)
    rep = run_skew(cfg, DAY, model=MODEL, model_source=source, fail=False, html=False, allow_unvalidated=True)
    return rep.table.set_index("feature")


def test_a_replayed_day_of_real_flights_has_zero_logic_skew_and_local_time_weather_is_flagged(flake, plan, tmp_path):
    decl = flake.repo().model(MODEL)
    by_set = {fs.name: list(fs.feature_names) for fs in decl.feature_sets}
    assert len(plan) == 902 and plan.tailnum.isna().sum() == 24  # flights asked about on the day; 24 without a tailnum
    ok = _replay_and_skew(flake, plan, tmp_path, "ok")
    feats = [n for names in by_set.values() for n in names]
    assert sorted(ok.index.drop("__score__")) == sorted(feats)
    assert ok.loc[feats, "logic_skew"].sum() == 0
    # every difference is late data (a departure reported 15 minutes after it happened: the log and
    # known_at agree, as_of differs), none is a logic, version, staleness or degradation one; trained
    # known_at, late data is not skew: no mismatch at all
    assert (ok.loc[feats, "mismatches"] == 0).all() and ok.loc[feats, "late_data"].sum() > 0
    assert ok.loc[feats, [c for c in CAUSES if c != "late_data"]].fillna(0).to_numpy().sum() == 0
    assert ok.loc[feats, "rows"].tolist() == [902] * len(feats)
    assert ok.loc["__score__", "rescore_max_abs_diff"] == 0.0
    assert ok.loc[feats, "psi"].notna().all()
    assert {ok.loc[n, "feature_set"] for n in feats} == set(SETS)

    # The wrong path replaces the same day: the report is of the wrong service's log.
    bad = _replay_and_skew(flake, plan, tmp_path, "bad", hook=_local_time_weather)
    flagged = set(bad.index[bad["logic_skew"].fillna(0) > 0]) - {"__score__"}
    assert flagged == set(by_set["origin_weather_v1"])  # all 12 weather features, nothing else
    assert (
        bad.loc["weather_wind_mean_6h", "logic_skew"] == 883 and bad.loc["weather_precip_sum_1h", "logic_skew"] == 612
    )
    others = by_set["plane_recent_v1"] + by_set["origin_congestion_v1"]
    pd.testing.assert_frame_equal(bad.loc[others, ["mismatches", *CAUSES]], ok.loc[others, ["mismatches", *CAUSES]])


def test_two_models_served_into_one_lake_do_not_collide(flake, plan, tmp_path):
    """dep_delay_15 and a second declared model (the same sets, another name) served into one lake
    and one WAL root: each has its own WAL directory, serving log table and skew report table."""
    from jobs.skew.job import run_skew

    decl = flake.repo().model(MODEL)
    twin = dataclasses.replace(decl, name="dep_delay_15_twin")
    rows = plan[plan.tailnum.notna()].head(6).reset_index(drop=True)
    root = tmp_path / "wal"
    a, _ = _serve(flake, tmp_path, rows)
    real_model = Repo.model
    try:
        Repo.model = lambda self, name: twin if name == twin.name else real_model(self, name)
        s = Settings(lake_root=flake.lake_root, model=twin.name, wal_dir=str(root), refresh_s=0.0)
        with TestClient(create_app(s, model_source=linear(twin), cfg=flake)) as c:
            res = replay(c, rows.head(4))
        assert (res.status == 200).all()
        assert sorted(p.name for p in root.iterdir()) == [MODEL, twin.name]
        assert len(read_wal(model_wal_dir(root, decl), decl)) == 6
        assert len(read_wal(model_wal_dir(root, twin), twin)) == 4
        ma, mb = (
            publish(flake, model_wal_dir(root, decl), decl, DAY),
            publish(flake, model_wal_dir(root, twin), twin, DAY),
        )
        assert (ma.rows, mb.rows) == (6, 4)
        lake = flake.lake()
        assert decl.serving_log_table == "serving_logs/dep_delay_15"
        assert len(lake.table(decl.serving_log_table).read(DAY)) == 6
        assert len(lake.table(twin.serving_log_table).read(DAY)) == 4
        ra = run_skew(
            flake, DAY, model=MODEL, model_source=linear(decl), fail=False, html=False, allow_unvalidated=True
        )
        rb = run_skew(
            flake, DAY, model=twin.name, model_source=linear(twin), fail=False, html=False, allow_unvalidated=True
        )
        assert lake.table(decl.skew_report_table).read(DAY)["rows"].max() == 6 == ra.table["rows"].max()
        assert lake.table(twin.skew_report_table).read(DAY)["rows"].max() == 4 == rb.table["rows"].max()
    finally:
        Repo.model = real_model


def test_a_batch_of_flights_answers_what_single_calls_answer_and_a_slow_set_degrades_only_itself(flake, plan, tmp_path):
    from jobs.serving.replay import request_body

    decl = flake.repo().model(MODEL)
    rows = pd.concat([plan[plan.tailnum.isna()].head(3), plan[plan.tailnum.notna()].head(27)], ignore_index=True)
    bodies = [request_body(r) for r in rows.itertuples(index=False)]
    weather = decl.joins[2].feature_set
    slow = SlowStore(EmbeddedStore.from_lake(flake, weather), 0.3)
    same = ("keys", "score", "degraded", "degraded_reason", "features")
    for name, store in (("healthy", None), ("slow", {weather.name: slow})):
        s = Settings(lake_root=flake.lake_root, model=MODEL, wal_dir=str(tmp_path / name), refresh_s=0.0)
        s = dataclasses.replace(s, cache_ttl_s=0.0, store_timeout_ms=40.0)
        with TestClient(create_app(s, model_source=linear(decl), store=store, cfg=flake)) as c:
            t0 = time.perf_counter()
            batch = c.post("/predict/batch", json={"queries": bodies}).json()["predictions"]
            took = time.perf_counter() - t0
            singles = [c.post("/predict", json={**b, "request_id": f"s-{b['request_id']}"}).json() for b in bodies]
        for one, many in zip(singles, batch):
            assert {k: many[k] for k in same} == {k: one[k] for k in same}
        logged = read_wal(model_wal_dir(tmp_path / name, decl), decl)
        assert set(logged.request_id) >= {b["request_id"] for b in bodies} and len(logged) == 60
        if name == "slow":  # the set's timeout for the whole batch, not 30 x 300 ms
            assert {p["degraded_reason"] for p in batch} == {"origin_weather_v1:store_timeout"} and took < 1.0
        else:
            assert not any(p["degraded"] for p in batch)
