"""A team's own data, declared only in this test, through every stage with no change to jobs/ or dags/.

The declarations (written to a repo directory, loaded with ``Config(repo_package=...)``): a CSV
source of orders with two STRING keys (shop, courier), naive Berlin wall-clock times and derived
event ids; a shop set and a courier set with HOUR windows; a model whose queries are the order
rows (``as_of`` = one hour before the order is due) and whose label is each order's OWN outcome
(15 minutes late, or cancelled). The flow: land -> validate -> snapshot -> labels -> training set
-> train -> register/promote -> score -> SQL table -> serve -> serving log -> skew.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
import pytest

from features.kernel import compute
from jobs.config import Config

pytestmark = pytest.mark.slow

DAYS = [f"2024-03-{d:02d}" for d in range(1, 11)]
MODEL = "late_e2e"

DECLARATIONS = """
from features.model import Condition, Join, Model, OutcomeLabel, QueryRows, Ranges
from features.source import Column, FileLander, Key, Source, hours
from features.spec import FeatureSet, agg, count

ORDERS = Source(
    name="orders_e2e",
    keys=(Key("shop", "string"), Key("courier", "string")),
    columns=(
        Column("due_ts", "timestamp[us, tz=UTC]", nullable=False),
        Column("minutes_late", "double", min=0),
        Column("status", "string", allowed=("done", "cancelled")),
    ),
    lander=FileLander("csv", "{root}/orders/{{ds}}.csv", time_zone="Europe/Berlin", ingest_latency_s=600),
    event_id="order_id",
    event_id_type="string",
)
SHOP = FeatureSet("shop_e2e_v1", source=ORDERS, key="shop",
                  features=(count("shop_orders_6h", hours(6)), agg("shop_late_mean_6h", "mean", "minutes_late", hours(6))))
COURIER = FeatureSet("courier_e2e_v1", source=ORDERS, key="courier",
                     features=(count("courier_orders_2h", hours(2)), agg("courier_late_max_24h", "max", "minutes_late", 1.0)))
MODEL = Model(
    name="late_e2e",
    queries=QueryRows(ORDERS, time="due_ts", offset_hours=-1, lead_days=2),  # due up to 30 h after the order
    label=OutcomeLabel((Condition("minutes_late", ">=", 15), Condition("status", "==", "cancelled")), maturity_hours=20),
    joins=(Join(SHOP), Join(COURIER)),
    params={{"num_leaves": 4, "min_data_in_leaf": 5, "verbose": -1}},
    rounds=30,
    ranges=Ranges(train=("2024-03-02", "2024-03-05"), valid=("2024-03-07", "2024-03-07"),
                  holdback=("2024-03-08", "2024-03-08")),
    predictions="predictions/late_e2e",
)
"""


def _write_orders(root, seed: int = 3) -> pd.DataFrame:
    """One CSV per day in Berlin wall-clock time; the late share depends on the shop (learnable)."""
    rng = np.random.default_rng(seed)
    rows = []
    for ds in DAYS:
        day = pd.Timestamp(ds)
        for _ in range(120):
            shop = f"s{rng.integers(0, 5)}"
            placed = day + pd.Timedelta(minutes=int(rng.integers(60, 22 * 60)))
            late = rng.random() < (0.15 + 0.15 * int(shop[1:]))
            rows.append(
                {
                    "shop": shop,
                    "courier": f"c{rng.integers(0, 6)}",
                    "event_ts": placed.strftime("%Y-%m-%d %H:%M:%S"),
                    "due_ts": (placed + pd.Timedelta(minutes=int(rng.integers(120, 30 * 60)))).strftime(
                        "%Y-%m-%d %H:%M:%S"
                    ),
                    "minutes_late": round(float(rng.uniform(15, 60) if late else rng.uniform(0, 14)), 1),
                    "status": "cancelled" if rng.random() < 0.05 else "done",
                }
            )
    frame = pd.DataFrame(rows)
    # a file per landing day: the day of ingested_at (UTC) = event time (Berlin) + 10 minutes
    utc = pd.to_datetime(frame["event_ts"]).dt.tz_localize("Europe/Berlin").dt.tz_convert("UTC")
    landing = (utc + pd.Timedelta(minutes=10)).dt.strftime("%Y-%m-%d")
    (root / "orders").mkdir(parents=True)
    for ds in DAYS:
        frame[landing == ds].to_csv(root / "orders" / f"{ds}.csv", index=False)
    return frame[landing.isin(DAYS)]


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    root = tmp_path_factory.mktemp("team")
    repo_dir = root / "repo"
    repo_dir.mkdir()
    (repo_dir / "late_e2e.py").write_text(textwrap.dedent(DECLARATIONS.format(root=root)))
    csv = _write_orders(root)
    cfg = Config(lake_root=str(root / "lake"), repo_package=str(repo_dir))
    return cfg, root, csv


def test_a_declared_model_flows_from_landing_to_skew(platform, tmp_path):
    from fastapi.testclient import TestClient

    from jobs.ingest.landing import land
    from jobs.models.registry import CHAMPION, Registry
    from jobs.quality.validate import validate_partition
    from jobs.scoring.batch import score_snapshot
    from jobs.scoring.sql import publish_predictions, read_day, sql_url
    from jobs.serving.app import Settings, create_app
    from jobs.serving.log import model_wal_dir, publish
    from jobs.serving.model import RegistrySource
    from jobs.serving.replay import plan_day, replay
    from jobs.skew.job import run_skew
    from jobs.snapshots import build_snapshot
    from jobs.training.labels import build_labels
    from jobs.training.spec import TrainSpec
    from jobs.training.trainer import train_model
    from jobs.training.training_set import build_training_set

    cfg, root, csv = platform
    repo = cfg.repo()
    model = repo.model(MODEL)
    orders = repo.source("orders_e2e")

    # land + validate: the derived suite of the source passes every day
    manifests = land(cfg, orders.name, DAYS[0], DAYS[-1])
    assert sum(m.rows for m in manifests) == len(csv)
    raw = cfg.lake().table(orders.table).read(DAYS[0], DAYS[-1])
    first = csv.iloc[0]
    got = raw.loc[(raw["shop"] == first["shop"]) & (raw["minutes_late"] == first["minutes_late"])]
    want_ts = pd.Timestamp(first["event_ts"]).tz_localize("Europe/Berlin").tz_convert("UTC")
    assert want_ts in set(got["event_ts"])  # Berlin wall clock -> UTC
    assert (raw["ingested_at"] - raw["event_ts"] == pd.Timedelta(minutes=10)).all()
    assert raw["order_id"].is_unique and raw["order_id"].dtype == object or str(raw["order_id"].dtype) == "str"
    for ds in DAYS:
        assert validate_partition(cfg, "raw_events", ds, source=orders.name).success

    # snapshots of both sets (hour windows, string keys), validated by their derived suites
    for fs in model.feature_sets:
        build_snapshot(cfg, DAYS[2], fs.name)
        assert validate_partition(cfg, "feature_snapshots", DAYS[2], feature_set=fs.name).success

    # labels (an outcome per query) and point-in-time training sets joining both sets
    label_days = DAYS[1:8]
    build_labels(cfg, MODEL, label_days)
    for ds in label_days:
        build_training_set(cfg, MODEL, ds)
    ts = cfg.lake().table(model.training_table).read(DAYS[3])
    assert list(ts.columns) == ["order_id", "shop", "courier", "as_of", "label", *model.feature_names]
    row = ts.iloc[0]
    for j in model.joins:
        fs = j.feature_set
        q = pd.DataFrame({fs.entity: [row[j.key_name]], "as_of": [row["as_of"]]})
        expected = compute(raw, q, fs, fs.training_mode)
        for name in fs.feature_names:
            a, b = row[name], expected[name].iloc[0]
            assert (pd.isna(a) and pd.isna(b)) or a == b, name
    src_row = raw.set_index("order_id").loc[row["order_id"]]
    outcome = src_row["minutes_late"] >= 15 or src_row["status"] == "cancelled"
    assert row["label"] == int(outcome)
    assert row["as_of"] == src_row["due_ts"] - pd.Timedelta(hours=1)

    # train, register through the lineage gate, promote
    spec = TrainSpec(
        train=model.ranges.train,
        valid=model.ranges.valid,
        holdback=model.ranges.holdback,
        model_name=MODEL,
        params=dict(model.params),
        num_boost_round=model.rounds,
        patience=10,
    )
    outcome = train_model(cfg, spec, baseline=False)
    registry = Registry.from_config(cfg)
    lineage = registry.load(MODEL, outcome.registered.version).lineage
    assert lineage["feature_set_fingerprint"] == model.fingerprint
    registry.promote(MODEL)
    assert registry.alias(MODEL, CHAMPION).version == outcome.registered.version

    # batch scoring of the orders due on D+1 with features as known at D+1 00:00, then the SQL table
    day = DAYS[7]
    score_snapshot(cfg, day, MODEL)
    preds = cfg.lake().table(model.predictions_table).read(day)
    assert len(preds) > 0 and preds["score"].between(0, 1).all()
    assert preds["order_id"].is_unique
    publish_predictions(cfg, day, MODEL)
    table = read_day(sql_url(cfg), day, model)
    assert sorted(table["order_id"]) == sorted(preds["order_id"])
    assert np.array_equal(
        table.sort_values("order_id")["score"].to_numpy(), preds.sort_values("order_id")["score"].to_numpy()
    )

    # serve a day of requests through the real registry champion, publish the log, check skew
    serve_day = DAYS[8]
    wal = tmp_path / "wal"
    settings = Settings(lake_root=cfg.lake_root, model=MODEL, wal_dir=str(wal), refresh_s=0.0)
    plan = plan_day(raw, serve_day, n_requests=60, model=model)
    with TestClient(create_app(settings, cfg=cfg)) as client:
        served = replay(client, plan)
    assert (served["status"] == 200).all()
    assert publish(cfg, model_wal_dir(wal, model), model, serve_day).rows == len(plan)
    assert validate_partition(cfg, "serving_logs", serve_day, model=MODEL).success  # the skew job requires it
    report = run_skew(cfg, serve_day, model=MODEL, model_source=RegistrySource(cfg, MODEL), html=False)
    counts = report.cause_counts()
    assert set(counts.index) == set(model.feature_names)
    assert counts["logic_skew"].sum() == 0 and counts["version_skew"].sum() == 0
    assert report.feature("__score__")["rescore_max_abs_diff"] == 0.0
