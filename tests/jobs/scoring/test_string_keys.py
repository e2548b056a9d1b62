"""Batch scoring of a string-keyed model declared in a test (``serving/string_repo``): query rows of
orders, two feature sets joined on two string keys, exact scores of a fixed model."""

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from serving.string_keyed import write_lake

from features.kernel import compute
from jobs.models import metadata
from jobs.models import registry as registry_module
from jobs.models.registry import CHAMPION, Candidate, Registry
from jobs.scoring.batch import (
    FingerprintMismatchError,
    predictions_table,
    query_rows_of_day,
    score_snapshot,
)

DS = "2024-01-03"


def _booster(names, seed=1) -> lgb.Booster:
    rng = np.random.default_rng(seed)
    x = rng.gamma(1.0, 3.0, (400, len(names)))
    y = (rng.random(400) < 1 / (1 + np.exp(-(x[:, 0] - 3)))).astype(int)
    params = {"objective": "binary", "verbosity": -1, "min_data_in_leaf": 5, "num_threads": 1, "seed": seed}
    return lgb.train(params, lgb.Dataset(x, y, feature_name=list(names)), 5)


def _register(reg: Registry, candidate: Candidate, stale: bool = False) -> None:
    """Register as champion; a version of stale feature sets passes the registry's lineage gate
    (which would refuse it) only to be refused by scoring."""
    with pytest.MonkeyPatch.context() as mp:
        if stale:
            mp.setattr(registry_module, "check_lineage", lambda *a, **k: None)
        reg.register(candidate, alias=CHAMPION)


def _candidate(model, booster, fingerprint=None) -> Candidate:
    return Candidate(
        name=model.name,
        model_text=booster.model_to_string(),
        feature_set="+".join(fs.name for fs in model.feature_sets),
        feature_names=list(model.feature_names),
        code_commit="0123456789abcdef0123456789abcdef01234567",
        feature_set_fingerprint=fingerprint or model.fingerprint,
        feature_sets=[{"name": fs.name, "fingerprint": fs.fingerprint} for fs in model.feature_sets],
        training_set_fingerprints={f"{model.training_table}/ds=2024-01-02": "c" * 64},
        environment_digest=metadata.environment_digest({}),
        params={"learning_rate": 0.1},
        metrics={"holdback_auc": 0.7},
        holdback={"key": "k" * 64},
    )


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    cfg, orders = write_lake(tmp_path_factory.mktemp("orders") / "lake")
    model = cfg.repo().model("late_order")
    booster = _booster(model.feature_names)
    reg = Registry.from_config(cfg)
    _register(reg, _candidate(model, booster))
    return cfg, orders, model, booster, reg


def _expected(orders, model, ds):
    """The queries of day ds by hand, and their features by the kernel itself (known at D+1 00:00)."""
    when = pd.Timestamp(ds, tz="UTC") + pd.Timedelta(days=1)
    as_of = orders["due_ts"] - pd.Timedelta(hours=1)
    q = orders[(as_of >= when) & (as_of < when + pd.Timedelta(days=1)) & (orders["ingested_at"] < when)]
    q = q[["order_id", "shop", "courier"]].sort_values("order_id", ignore_index=True)
    q["as_of"] = when
    out = q.copy()
    for j in model.joins:
        fs = j.feature_set
        got = compute(orders, q.rename(columns={j.key_name: fs.entity})[[fs.entity, "as_of"]], fs, "known_at")
        for name in fs.feature_names:
            out[name] = got[name].to_numpy()
    return out


def test_query_rows_of_a_day_are_the_orders_due_the_next_day(lake):
    cfg, orders, model, _, _ = lake
    got = query_rows_of_day(cfg, model, DS)
    want = _expected(orders, model, DS)
    assert len(got) == len(want) > 20
    assert got["order_id"].tolist() == want["order_id"].tolist()
    assert got["shop"].tolist() == want["shop"].tolist() and got["courier"].tolist() == want["courier"].tolist()
    assert (got["as_of"] == pd.Timestamp("2024-01-04", tz="UTC")).all()


def test_string_keyed_model_scores_exactly(lake):
    cfg, orders, model, booster, reg = lake
    m = score_snapshot(cfg, DS, "late_order", registry=reg, validate=False, batch_rows=7, allow_unvalidated=True)
    got = predictions_table(cfg.lake(), model).read(DS).sort_values("order_id", ignore_index=True)
    want = _expected(orders, model, DS)
    assert m.table == "predictions/late_order" and m.rows == len(want)
    assert list(got.columns[:3]) == ["order_id", "shop", "courier"]
    assert got["order_id"].tolist() == want["order_id"].tolist() and got["shop"].tolist() == want["shop"].tolist()
    x = want[list(model.feature_names)].to_numpy(dtype=np.float64)
    np.testing.assert_array_equal(got["score"].to_numpy(), booster.predict(x))
    # one hand-checked feature: the orders of the shop placed in the 6 hours before 2024-01-04 00:00
    first = want.iloc[0]
    t = pd.Timestamp("2024-01-04", tz="UTC")
    placed = orders[
        (orders.shop == first.shop) & (orders.event_ts >= t - pd.Timedelta(hours=6)) & (orders.event_ts < t)
    ]
    assert first["shop_orders_6h"] == len(placed)
    assert set(got["feature_set_fingerprint"]) == {model.fingerprint} and "+" in model.fingerprint
    assert m.producer["feature_sets"] == ["shop_load_v1", "courier_load_v1"]
    again = score_snapshot(
        cfg, DS, "late_order", registry=reg, allow_unvalidated=True
    )  # through the derived predictions suite
    assert again.content_fingerprint == m.content_fingerprint


def test_a_version_trained_on_other_feature_sets_is_refused(lake, tmp_path):
    cfg, _, model, booster, _ = lake
    reg = Registry.from_config(cfg.__class__(lake_root=str(tmp_path / "other"), repo_package=cfg.repo_package))
    stale = "shop_load_v1:00000000deadbeef+" + model.feature_sets[1].fingerprint
    _register(reg, _candidate(model, booster, fingerprint=stale), stale=True)
    with pytest.raises(FingerprintMismatchError, match=r"trained on features shop_load_v1:00000000deadbeef\+"):
        score_snapshot(cfg, DS, "late_order", registry=reg, validate=False, allow_unvalidated=True)


def test_a_one_set_entity_snapshot_model_with_string_keys_scores_its_snapshot(lake):
    from jobs.snapshots import build_snapshot, snapshot_table

    cfg, _, _, _, reg = lake
    model = cfg.repo().model("shop_busy")
    booster = _booster(model.feature_names, seed=4)
    _register(reg, _candidate(model, booster))
    build_snapshot(cfg, DS, "shop_load_v1", allow_unvalidated=True)
    m = score_snapshot(cfg, DS, "shop_busy", registry=reg, validate=False, allow_unvalidated=True)
    snap = snapshot_table(cfg.lake(), model.feature_sets[0]).read(DS).sort_values("shop", ignore_index=True)
    got = predictions_table(cfg.lake(), model).read(DS).sort_values("shop", ignore_index=True)
    assert m.table == "predictions/shop_busy" and got["shop"].tolist() == ["s1", "s2", "s3"] == snap["shop"].tolist()
    assert str(predictions_table(cfg.lake(), model).schema.field("shop").type) == "string"
    x = snap[list(model.feature_names)].to_numpy(dtype=np.float64)
    np.testing.assert_array_equal(got["score"].to_numpy(), booster.predict(x))


def test_an_entity_snapshot_model_of_two_sets_joins_their_snapshots(lake):
    """Every entity of the first set's snapshot, the second set's vector from its own snapshot (its
    declared defaults for an entity it lacks): what the kernel gives at D+1 00:00."""
    from jobs.snapshots import build_snapshot

    cfg, orders, _, _, reg = lake
    model = cfg.repo().model("shop_risk")
    booster = _booster(model.feature_names, seed=5)
    _register(reg, _candidate(model, booster))
    for fs in model.feature_sets:
        build_snapshot(cfg, DS, fs.name, allow_unvalidated=True)
    m = score_snapshot(cfg, DS, "shop_risk", registry=reg, validate=False, allow_unvalidated=True)
    got = predictions_table(cfg.lake(), model).read(DS).sort_values("shop", ignore_index=True)
    q = pd.DataFrame({"shop": ["s1", "s2", "s3"], "as_of": pd.Timestamp("2024-01-04", tz="UTC")})
    x = np.hstack(
        [
            compute(orders, q, fs, "known_at")[list(fs.feature_names)].to_numpy(dtype=np.float64)
            for fs in model.feature_sets
        ]
    )
    assert m.table == "predictions/shop_risk" and got["shop"].tolist() == ["s1", "s2", "s3"]
    assert len(m.inputs) == 2 and m.producer["feature_set_fingerprint"] == model.fingerprint
    np.testing.assert_array_equal(got["score"].to_numpy(), booster.predict(x))


def test_a_model_of_two_sources_gets_the_declared_defaults_for_an_entity_one_source_lacks(lake):
    """Shop s3 has orders but no rating: its ratings vector is absent from that set's snapshot, and
    scoring uses the declared defaults (count 0, mean null), what the kernel gives it."""
    from serving.string_keyed import make_ratings

    from jobs.snapshots import build_snapshot, snapshot_table

    cfg, orders, _, _, reg = lake
    model = cfg.repo().model("shop_rated")
    booster = _booster(model.feature_names, seed=6)
    _register(reg, _candidate(model, booster))
    for fs in model.feature_sets:
        build_snapshot(cfg, DS, fs.name, allow_unvalidated=True)
    assert snapshot_table(cfg.lake(), model.feature_sets[1]).read(DS)["shop"].tolist() == ["s1", "s2"]
    m = score_snapshot(cfg, DS, "shop_rated", registry=reg, validate=False, allow_unvalidated=True)
    got = predictions_table(cfg.lake(), model).read(DS).sort_values("shop", ignore_index=True)
    q = pd.DataFrame({"shop": ["s1", "s2", "s3"], "as_of": pd.Timestamp("2024-01-04", tz="UTC")})
    loads = compute(orders, q, model.feature_sets[0], "known_at")
    ratings = compute(make_ratings(), q, model.feature_sets[1], "known_at")
    assert ratings["ratings_24h"].iloc[2] == 0 and np.isnan(ratings["stars_mean_24h"].iloc[2])
    x = np.hstack(
        [loads[list(model.feature_sets[0].feature_names)], ratings[list(model.feature_sets[1].feature_names)]]
    )
    assert m.rows == 3 and got["shop"].tolist() == ["s1", "s2", "s3"]
    np.testing.assert_array_equal(got["score"].to_numpy(), booster.predict(x.astype(np.float64)))
