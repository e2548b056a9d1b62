"""``join_features``: a model's feature sets joined point in time, one engine pass per set."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features import kernel
from features.model import Model
from jobs import engines
from jobs.engines.join import join_features

REPO_DIR = Path(__file__).resolve().parents[2] / "fixtures" / "late_orders"
_spec = importlib.util.spec_from_file_location("late_orders_fixture", REPO_DIR / "late_orders.py")
lo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lo)


def _lake(cfg, key_type):
    d = lo.declare(key_type, "" if key_type == "string" else "_int")
    orders, pings = lo.make_events(key_type=key_type)
    lo.write_raw(cfg.lake(), d["orders"], orders)
    lo.write_raw(cfg.lake(), d["pings"], pings)
    return d, orders, pings


def _queries(orders: pd.DataFrame) -> pd.DataFrame:
    q = orders.loc[orders["due_ts"] < pd.Timestamp("2024-01-05", tz="UTC")]
    q = q[["order_id", "shop", "courier"]].assign(as_of=q["due_ts"] - pd.Timedelta(hours=1), tag=np.arange(len(q)))
    return q.reset_index(drop=True)


def naive(model: Model, queries: pd.DataFrame, events: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One kernel call per query row and set, over all of that set's events."""
    rows = []
    for _, row in queries.iterrows():
        out = row.to_dict()
        for j in model.joins:
            fs = j.feature_set
            one = pd.DataFrame({fs.entity: [row[j.key_name]], "as_of": [row["as_of"]]})
            feats = kernel.compute(events[fs.source.name], one, fs, fs.training_mode)
            out.update({n: feats[n].iloc[0] for n in fs.feature_names})
        rows.append(out)
    return pd.DataFrame(rows)


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values("order_id", kind="stable", ignore_index=True)


@pytest.mark.parametrize("key_type", ["int64", "string"])
def test_two_sets_equal_a_naive_per_row_computation(make_config, key_type):
    cfg = make_config()
    d, orders, pings = _lake(cfg, key_type)
    model = d["model"]
    q = _queries(orders)
    got = _sorted(pd.concat(list(join_features(cfg, model, q)), ignore_index=True))
    assert list(got.columns) == ["order_id", "shop", "courier", "as_of", "tag", *model.feature_names]
    want = _sorted(naive(model, q, {d["orders"].name: orders, d["pings"].name: pings}))
    assert len(got) == len(q)
    for c in model.feature_names:
        np.testing.assert_array_equal(got[c].to_numpy(dtype=float), want[c].to_numpy(dtype=float), err_msg=c)
    assert got["courier"].tolist() == want["courier"].tolist() and got["tag"].tolist() == want["tag"].tolist()
    assert got["courier_pings_1h"].sum() > 0 and got["shop_orders_6h"].sum() > 0


def test_queries_as_parquet_files_and_scratch_removed(make_config, tmp_path):
    cfg = make_config()
    d, orders, _ = _lake(cfg, "int64")
    q = _queries(orders)
    path = str(tmp_path / "q.parquet")
    q.to_parquet(path, index=False)
    from_frame = _sorted(pd.concat(list(join_features(cfg, d["model"], q)), ignore_index=True))
    from_files = _sorted(pd.concat(list(join_features(cfg, d["model"], [path])), ignore_index=True))
    pd.testing.assert_frame_equal(from_files, from_frame, check_dtype=False)
    scratch = Path(cfg.lake_root) / "_scratch"
    assert not [p for p in scratch.glob("join-*")] if scratch.exists() else True


def test_one_set_model_is_exactly_one_engine_run(make_config):
    from features import repo

    cfg = make_config()
    m = repo.load().model("repurchase_90d")
    fs = m.feature_sets[0]
    rng = np.random.default_rng(3)
    n = 400
    ts = pd.Timestamp("1997-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 40 * 24, n), unit="h")
    events = pd.DataFrame(
        {
            "event_id": np.arange(n, dtype=np.int64),
            "customer_id": rng.integers(1, 30, n).astype(np.int64),
            "event_ts": ts.astype("datetime64[us, UTC]"),
            "ingested_at": (ts + pd.Timedelta(hours=1)).astype("datetime64[us, UTC]"),
            "n_items": rng.integers(1, 4, n).astype(np.int64),
            "amount": rng.uniform(5, 50, n),
            "category": rng.choice(["budget", "standard"], n),
        }
    )
    lo.write_raw(cfg.lake(), fs.source, events)
    q = pd.DataFrame(
        {
            "customer_id": np.arange(1, 30, dtype=np.int64),
            "as_of": pd.Timestamp("1997-02-03", tz="UTC"),
            "label": np.int8(1),
        }
    )
    q["as_of"] = q["as_of"].astype("datetime64[us, UTC]")
    table = cfg.lake().table(fs.source.table)
    want = engines.collect(engines.run(cfg, fs, table.files(table.first_ds(), "1997-02-02"), q), fs)
    got = engines.collect(join_features(cfg, m, q), fs)
    pd.testing.assert_frame_equal(got, want)


def test_missing_query_columns_are_named(make_config):
    cfg = make_config()
    d = lo.declare("int64", "_int")
    with pytest.raises(KeyError, match=r"queries are missing column\(s\) \['courier'\]"):
        list(join_features(cfg, d["model"], pd.DataFrame({"shop": [1], "as_of": [pd.Timestamp(0, tz="UTC")]})))


@pytest.mark.dask
def test_two_set_join_local_equals_dask(make_config, dask_client):
    local = make_config()
    d, orders, _ = _lake(local, "string")
    q = _queries(orders)
    want = _sorted(pd.concat(list(join_features(local, d["model"], q)), ignore_index=True))
    dask_cfg = make_config("dask", buckets=3)
    got = _sorted(pd.concat(list(join_features(dask_cfg, d["model"], q, client=dask_client)), ignore_index=True))
    pd.testing.assert_frame_equal(got, want, check_exact=True)


@pytest.mark.spark
def test_two_set_join_local_equals_spark(make_config, spark):
    local = make_config()
    d, orders, _ = _lake(local, "string")
    q = _queries(orders)
    want = _sorted(pd.concat(list(join_features(local, d["model"], q)), ignore_index=True))
    spark_cfg = make_config("spark", buckets=3)
    got = _sorted(pd.concat(list(join_features(spark_cfg, d["model"], q, spark=spark)), ignore_index=True))
    pd.testing.assert_frame_equal(got, want, check_exact=True)
