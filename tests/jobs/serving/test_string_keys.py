"""A string-keyed model declared in a test (``string_repo``) served and checked for skew: two
feature sets on two string keys, requests by key name, every served feature equal to the kernel's,
and a skew job that finds no logic skew on a correct log and the cause on a wrong one."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from features.kernel import compute
from features.online import compute_one
from jobs.serving.app import FingerprintMismatchError, Settings, create_app
from jobs.serving.log import log_schema, model_wal_dir, publish
from jobs.serving.model import LinearModel, StaticSource
from jobs.serving.replay import plan_day, replay
from jobs.skew.job import SkewThresholdError, run_skew

from .string_keyed import write_lake
from .test_service import redis_url  # noqa: F401 - the Redis server fixture

DAY = "2024-01-04"


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    cfg, orders = write_lake(tmp_path_factory.mktemp("orders") / "lake")
    model = cfg.repo().model("late_order")
    scorer = LinearModel("late_order", "1", model.fingerprint, model.feature_names)
    return cfg, orders, model, StaticSource(scorer)


def _app(cfg, source, tmp_path, **kw):
    settings = Settings(lake_root=cfg.lake_root, model="late_order", wal_dir=str(tmp_path / "wal"), refresh_s=0.0)
    return create_app(settings, model_source=source, cfg=cfg, **kw)


def test_a_request_by_string_keys_serves_the_kernels_features(lake, tmp_path):
    cfg, orders, model, source = lake
    t = pd.Timestamp(f"{DAY}T09:30:00.5Z")
    with TestClient(_app(cfg, source, tmp_path)) as c:
        r = c.post("/predict", json={"shop": "s1", "courier": "c3", "request_time": t.isoformat(), "email": "x@y"})
        r2 = c.post("/predict", json={"keys": {"shop": "s1", "courier": "c3"}, "request_time": t.isoformat()})
        missing = c.post("/predict", json={"shop": "s1", "request_time": t.isoformat()})
        health = c.get("/health").json()
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["keys"] == {"shop": "s1", "courier": "c3"} and "entity_id" not in body
    assert r2.json()["features"] == body["features"]
    assert missing.status_code == 422 and "courier" in missing.text
    assert (
        body["feature_set_fingerprint"] == model.fingerprint and health["feature_set"] == "shop_load_v1+courier_load_v1"
    )
    want = {}
    for j, key in zip(model.joins, ("s1", "c3")):
        fs = j.feature_set
        got = compute(orders, pd.DataFrame({fs.entity: [key], "as_of": [t]}), fs, "known_at")
        want.update({f.name: got[f.name].iloc[0] for f in fs.features})
        assert compute_one(orders, key, t, fs) == {n: body["features"][n] for n in fs.feature_names}
    for name, value in want.items():
        served = body["features"][name]
        assert (served is None and pd.isna(value)) or served == value, name
    assert body["features"]["shop_orders_lifetime"] > body["features"]["shop_orders_6h"] > 0
    logged = list(log_schema(model).names)
    assert logged[:3] == ["request_id", "shop", "courier"] and "entity_id" not in logged


def test_a_champion_of_other_feature_sets_is_refused(lake, tmp_path):
    cfg, _, model, _ = lake
    old = LinearModel("late_order", "0", "shop_load_v1:00000000deadbeef", model.feature_names)
    with pytest.raises(FingerprintMismatchError, match="trained on features shop_load_v1:00000000deadbeef"):
        with TestClient(_app(cfg, StaticSource(old), tmp_path)):
            pass
    shuffled = LinearModel("late_order", "0", model.fingerprint, model.feature_names[::-1])
    with pytest.raises(FingerprintMismatchError, match="expects features"):
        with TestClient(_app(cfg, StaticSource(shuffled), tmp_path)):
            pass


def _own_lake(cfg, tmp_path):
    """A lake sharing ``cfg``'s raw tables, with its own snapshots of every set for the two days
    before ``DAY`` (materialized mode, staleness)."""
    from jobs.snapshots import build_snapshot

    root = tmp_path / "lake"
    root.mkdir()
    (root / "raw_events").symlink_to(f"{cfg.lake_root}/raw_events")  # share the inputs, own the outputs
    own = dataclasses.replace(cfg, lake_root=str(root))
    for fs in own.repo().model("late_order").feature_sets:
        for ds in ("2024-01-02", "2024-01-03"):
            build_snapshot(own, ds, fs.name, allow_unvalidated=True)
    return own


def _serve_day(cfg, orders, model, source, tmp_path, hook=None, mode=None):
    wal = tmp_path / "wal"
    plan = plan_day(orders, DAY, model=model, mode=mode)
    assert len(plan) > 20 and list(plan.columns)[:4] == ["request_id", "shop", "courier", "request_time"]
    with TestClient(_app(cfg, source, tmp_path, hook=hook)) as client:
        res = replay(client, plan)
    assert (res.status == 200).all(), res.status.value_counts()
    assert publish(cfg, model_wal_dir(wal, model), model, DAY).rows == len(plan)
    return plan


def test_skew_of_a_correct_log_has_no_logic_skew(lake, tmp_path):
    cfg, orders, model, source = lake
    own = _own_lake(cfg, tmp_path)
    plan = _serve_day(own, orders, model, source, tmp_path)
    rep = run_skew(own, DAY, model="late_order", model_source=source, html=False, allow_unvalidated=True)
    counts = rep.cause_counts()
    assert set(counts.index) == set(model.feature_names)
    assert counts[["logic_skew", "version_skew", "staleness", "degraded"]].to_numpy().sum() == 0
    sets = rep.table.set_index("feature")["feature_set"].to_dict()
    assert sets["shop_orders_6h"] == "shop_load_v1" and sets["courier_orders_2h"] == "courier_load_v1"
    assert rep.feature("__score__")["rescore_max_abs_diff"] == 0.0 and len(rep.rows) == len(plan)
    assert rep.fingerprints == {model.fingerprint: len(plan)}


def test_materialized_mode_of_string_keys_is_staleness(lake, tmp_path):
    cfg, orders, model, source = lake
    own = _own_lake(cfg, tmp_path)
    _serve_day(own, orders, model, source, tmp_path, mode="materialized")
    rep = run_skew(own, DAY, model="late_order", model_source=source, html=False, fail=False, allow_unvalidated=True)
    counts = rep.cause_counts()
    assert counts["logic_skew"].sum() == 0 and counts["version_skew"].sum() == 0
    assert counts.loc["shop_orders_lifetime", "staleness"] > 0  # yesterday's vector, served today
    assert set(rep.rows["snapshot_ds"]) == {"2024-01-03"}


def test_skew_of_a_wrong_courier_window_is_logic_skew_on_that_feature(lake, tmp_path):
    cfg, orders, model, source = lake
    own = _own_lake(cfg, tmp_path)
    courier = model.feature_sets[1]
    wrong = dataclasses.replace(
        courier,
        features=tuple(
            dataclasses.replace(f, window_days=1.0) if f.name == "courier_orders_2h" else f for f in courier.features
        ),
    )

    def hook(events, key, t, fs):  # the courier set computed with a 24-hour window for its 2-hour count
        return compute_one(events, key, t, wrong if fs.name == courier.name else fs, "known_at")

    _serve_day(own, orders, model, source, tmp_path, hook=hook)
    with pytest.raises(SkewThresholdError, match="courier_orders_2h: logic_skew_rate") as info:
        run_skew(own, DAY, model="late_order", model_source=source, html=False, allow_unvalidated=True)
    counts = info.value.report.cause_counts()
    assert counts.loc["courier_orders_2h", "logic_skew"] > 0
    assert counts.drop(index="courier_orders_2h")["logic_skew"].sum() == 0


def test_a_one_key_model_takes_a_string_entity_id(lake, tmp_path):
    cfg, orders, _, _ = lake
    model = cfg.repo().model("shop_busy")
    source = StaticSource(LinearModel("shop_busy", "1", model.fingerprint, model.feature_names))
    settings = Settings(lake_root=cfg.lake_root, model="shop_busy", wal_dir=str(tmp_path / "wal"), refresh_s=0.0)
    t = pd.Timestamp(f"{DAY}T12:00:00Z")
    with TestClient(create_app(settings, model_source=source, cfg=cfg)) as c:
        body = c.post("/predict", json={"entity_id": "s2", "request_time": t.isoformat()}).json()
        unknown = c.post("/predict", json={"entity_id": "nope", "request_time": t.isoformat()}).json()
    fs = model.feature_sets[0]
    assert body["entity_id"] == "s2" and body["features"] == compute_one(orders, "s2", t, fs)
    assert unknown["features"]["shop_orders_lifetime"] == 0 and unknown["features"]["shop_late_mean_6h"] is None
    assert log_schema(model).field("entity_id").type == "string"


def test_redis_store_serves_string_keys_like_the_embedded_one(lake, tmp_path, redis_url):  # noqa: F811
    cfg, orders, model, source = lake
    t = pd.Timestamp(f"{DAY}T15:45:00Z")
    served = {}
    for name, extra in (("redis", {"redis_url": redis_url}), ("embedded", {})):
        settings = Settings(
            lake_root=cfg.lake_root, model="late_order", wal_dir=str(tmp_path / name), refresh_s=0.0, **extra
        )
        with TestClient(create_app(settings, model_source=source, cfg=cfg)) as c:
            served[name] = [
                c.post("/predict", json={"shop": s, "courier": k, "request_time": t.isoformat()}).json()["features"]
                for s, k in (("s1", "c1"), ("s3", "c4"), ("zz", "c2"))
            ]
    assert served["redis"] == served["embedded"]
    assert served["redis"][0] == {
        **compute_one(orders, "s1", t, model.feature_sets[0]),
        **compute_one(orders, "c1", t, model.feature_sets[1]),
    }


def test_an_old_courier_set_is_version_skew_on_its_features_only(lake, tmp_path):
    """A service still computing the courier set's previous definition stamps that set's old
    fingerprint: version skew on the changed feature of that set, nothing on the shop set."""
    cfg, orders, model, source = lake
    own = _own_lake(cfg, tmp_path)
    courier = model.feature_sets[1]
    old = dataclasses.replace(
        courier,
        features=tuple(
            dataclasses.replace(f, window_days=3.0) if f.name == "courier_late_max_24h" else f for f in courier.features
        ),
    )

    def hook(events, key, t, fs):
        return compute_one(events, key, t, old if fs.name == courier.name else fs, "known_at")

    hook.fingerprint = old.fingerprint
    _serve_day(own, orders, model, source, tmp_path, hook=hook)
    with pytest.raises(SkewThresholdError, match="courier_late_max_24h: version_skew_rate") as info:
        run_skew(own, DAY, model="late_order", model_source=source, html=False, allow_unvalidated=True)
    rep = info.value.report
    counts = rep.cause_counts()
    assert counts.loc["courier_late_max_24h", "version_skew"] > 0
    assert counts["logic_skew"].sum() == 0
    assert counts.drop(index="courier_late_max_24h")["version_skew"].sum() == 0
    assert set(rep.fingerprints) == {f"{model.feature_sets[0].fingerprint}+{old.fingerprint}"}
    assert any("unknown to the registry" in n for n in rep.notes)


def test_a_model_of_two_sources_serves_each_set_from_its_own_store(lake, tmp_path):
    from .string_keyed import make_ratings

    cfg, orders, _, _ = lake
    model = cfg.repo().model("shop_rated")
    source = StaticSource(LinearModel("shop_rated", "1", model.fingerprint, model.feature_names))
    settings = Settings(lake_root=cfg.lake_root, model="shop_rated", wal_dir=str(tmp_path / "wal"), refresh_s=0.0)
    t = pd.Timestamp(f"{DAY}T18:00:00Z")
    app = create_app(settings, model_source=source, cfg=cfg)
    with TestClient(app) as c:
        rated = c.post("/predict", json={"entity_id": "s1", "request_time": t.isoformat()}).json()
        unrated = c.post("/predict", json={"entity_id": "s3", "request_time": t.isoformat()}).json()
        stores = app.state.lockstep["stores"]
    loads, ratings = model.feature_sets
    assert [s.fs.name for s in stores] == ["shop_load_v1", "shop_ratings_v1"] and len(stores[1]) == 2
    assert rated["features"] == {**compute_one(orders, "s1", t, loads), **compute_one(make_ratings(), "s1", t, ratings)}
    assert rated["features"]["ratings_24h"] > 0
    assert unrated["features"]["ratings_24h"] == 0 and unrated["features"]["stars_mean_24h"] is None
    assert unrated["features"]["shop_orders_lifetime"] > 0
