"""String entity keys on every engine: local == Dask == Spark == the kernel, bit for bit.

A source with a string key (shops, some with non-ASCII names and one unknown to the events),
a feature set with hour windows, events at microsecond times over a few days. Every engine's
output, sorted, must equal ``features.kernel.compute`` over all events and queries exactly
(``==`` on every value, dtypes included) — for a snapshot, a query frame and query files.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features import kernel
from features.source import Column, FileLander, Key, Source, hours
from features.spec import Feature, FeatureSet, agg, count
from jobs import engines
from jobs.engines import Snapshot
from jobs.engines.bucketing import bucket_of, key_hashes, normalize_keys
from jobs.schemas import raw_schema, to_raw

SHOPS = Source(
    name="shop_orders",
    keys=(Key("shop", "string"),),
    columns=(
        Column("minutes_late", "double", min=0),
        Column("status", "string", allowed=("done", "cancelled")),
    ),
    lander=FileLander("csv", "orders/{ds}.csv"),
    event_id="order_id",
    event_id_type="string",
)
FS = FeatureSet(
    name="shop_load_v1",
    source=SHOPS,
    features=(
        count("orders_1h", hours(1)),
        count("orders_6h", hours(6)),
        agg("late_mean_6h", "mean", "minutes_late", hours(6)),
        agg("late_max_24h", "max", "minutes_late", hours(24)),
        agg("statuses_24h", "distinct_count", "status", hours(24)),
        Feature("recency_days", "days_since_last"),
    ),
)
KEY = "shop"
MODES = ("known_at", "as_of")
ENGINES = (
    "local",
    pytest.param("dask", marks=pytest.mark.dask),
    pytest.param("spark", marks=pytest.mark.spark),
)
START = pd.Timestamp("2024-03-01", tz="UTC")


def make_events(n=6_000, seed=3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    shops = np.array([f"shop-{i:03d}" for i in range(60)] + ["café", "日本", "a b", ""], dtype=object)
    us = START.value // 1000 + rng.integers(0, 4 * 86_400_000_000, n)
    late = rng.integers(0, 600_000_000, n)
    minutes = np.round(rng.exponential(7.0, n), 3)
    minutes[rng.random(n) < 0.05] = np.nan
    df = pd.DataFrame(
        {
            "order_id": [f"o{i:06d}" for i in range(n)],
            KEY: rng.choice(shops, n),
            "event_ts": pd.to_datetime(us, unit="us", utc=True),
            "ingested_at": pd.to_datetime(us + late, unit="us", utc=True),
            "minutes_late": minutes,
            "status": rng.choice(np.array(["done", "cancelled"], dtype=object), n),
        }
    )
    # ties on the timestamp within a shop
    df.loc[df.index[:50], "event_ts"] = df["event_ts"].iloc[0]
    df.loc[df.index[:50], KEY] = "shop-001"
    df["ingested_at"] = df[["event_ts", "ingested_at"]].max(axis=1)
    return to_raw(SHOPS, df).to_pandas()


def make_queries(events: pd.DataFrame, n=3_000, seed=4) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    shops = np.r_[events[KEY].unique(), ["unknown-shop"]]
    us = START.value // 1000 + rng.integers(-3_600_000_000, 5 * 86_400_000_000, n)
    q = pd.DataFrame(
        {
            KEY: pd.array(rng.choice(shops, n), dtype="str"),
            "as_of": pd.to_datetime(us, unit="us", utc=True),
        }
    )
    on_event = events.sample(200, random_state=seed)[[KEY, "event_ts"]].rename(columns={"event_ts": "as_of"})
    q = pd.concat([q, on_event], ignore_index=True)
    q.insert(0, "qid", np.arange(len(q), dtype=np.int64))
    return q


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("string_keys")
    events = make_events()
    files = []
    for i, idx in enumerate(np.array_split(np.arange(len(events)), 3)):
        path = root / f"events-{i}.parquet"
        pq.write_table(to_raw(SHOPS, events.iloc[idx].reset_index(drop=True)), path)
        files.append(str(path))
    queries = make_queries(events)
    qpath = root / "queries.parquet"
    # a large_string key column in the query file: normalised to string before bucketing
    qt = pa.Table.from_pandas(queries, preserve_index=False)
    qt = qt.set_column(qt.schema.get_field_index(KEY), KEY, pa.compute.cast(qt.column(KEY), pa.large_string()))
    pq.write_table(qt, qpath)
    return events, files, queries, [str(qpath)]


@pytest.fixture
def engine_fixtures(request):
    engine = request.node.callspec.params["engine"]
    dask_client = request.getfixturevalue("dask_client") if engine == "dask" else None
    if engine == "spark":
        request.getfixturevalue("spark")
    return dask_client


def run_engine(engine, make_config, dask_client, files, queries, mode):
    cfg = make_config(engine, buckets=7)
    opts = {"client": dask_client} if engine == "dask" else {}
    return pd.concat(list(engines.run(cfg, FS, files, queries, mode, **opts)), ignore_index=True)


def canonical(df: pd.DataFrame) -> pd.DataFrame:
    keys = [KEY, "as_of"] + (["qid"] if "qid" in df.columns else [])
    out = df.sort_values(keys, kind="stable", ignore_index=True)
    out[KEY] = out[KEY].astype(object)  # the key's values compared, whatever string dtype carries them
    return out


def assert_identical(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == list(want.columns)
    got, want = canonical(got), canonical(want)
    assert len(got) == len(want)
    for c in want.columns:
        a, b = got[c], want[c]
        assert a.dtype == b.dtype or c == KEY, (c, a.dtype, b.dtype)
        both_null = a.isna().to_numpy() & b.isna().to_numpy()
        same = (a.to_numpy() == b.to_numpy()) if not both_null.any() else None
        if same is None:
            same = both_null | (a.fillna(0).to_numpy() == b.fillna(0).to_numpy())
            assert (a.isna() == b.isna()).all(), c
        assert bool(np.all(same)), f"column {c}: {int((~np.asarray(same)).sum())} value(s) differ"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("engine", ENGINES)
def test_string_key_snapshot(engine, mode, data, make_config, engine_fixtures):
    events, files, _, _ = data
    as_of = START + pd.Timedelta(hours=50, microseconds=17)
    want = kernel.compute(events, kernel.snapshot_queries(events, FS, as_of, mode), FS, mode)
    assert len(want) > 50 and (want["orders_1h"] > 0).any()
    got = run_engine(engine, make_config, engine_fixtures, files, Snapshot(as_of), mode)
    assert_identical(got, want)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("engine", ENGINES)
def test_string_key_query_frame_and_files(engine, mode, data, make_config, engine_fixtures):
    events, files, queries, qfiles = data
    want = kernel.compute(events, queries, FS, mode)
    assert (want["orders_6h"] > 0).sum() > 500 and want["late_mean_6h"].notna().sum() > 500
    assert_identical(run_engine(engine, make_config, engine_fixtures, files, queries, mode), want)
    assert_identical(run_engine(engine, make_config, engine_fixtures, files, qfiles, mode), want)


def test_string_buckets_are_stable_and_independent_of_the_encoding():
    keys = ["shop-001", "café", "日本", "", "a b"] * 3
    want = bucket_of(pd.Series(keys, dtype=object), 16)
    for variant in (
        pa.array(keys, pa.string()),
        pa.array(keys, pa.large_string()),
        pa.array(keys).dictionary_encode(),
        pd.Series(keys, dtype="str"),
        pd.Series(keys, dtype="category"),
    ):
        np.testing.assert_array_equal(bucket_of(variant, 16), want)
    # fixed values: the bucket of a key never changes between processes or releases
    assert key_hashes(pa.array(["shop-001", ""])).tolist() == key_hashes(pa.array(["shop-001", ""])).tolist()
    spread = np.bincount(bucket_of(pa.array([f"k{i}" for i in range(16_000)]), 16))
    assert spread.min() > 800 and spread.max() < 1_200
    assert normalize_keys(pd.Series(["a", "b"], dtype=object)).tolist() == ["a", "b"]


def test_string_buckets_are_deterministic_across_processes(tmp_path):
    import subprocess
    import sys

    code = (
        "import pyarrow as pa\n"
        "from jobs.engines.bucketing import bucket_of\n"
        "print(bucket_of(pa.array(['shop-001', 'café', 'x' * 40]), 1000).tolist())\n"
    )
    script = tmp_path / "b.py"
    script.write_text(code)
    runs = {
        subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": s}
        ).stdout
        for s in ("1", "2")
    }
    assert len(runs) == 1
    assert runs.pop().strip() == str(bucket_of(pa.array(["shop-001", "café", "x" * 40]), 1000).tolist())


def test_raw_schema_types_string_keys_and_ids():
    schema = raw_schema(SHOPS)
    assert schema.field(KEY).type == pa.string() and not schema.field(KEY).nullable
    assert schema.field("order_id").type == pa.string()


def test_feature_schema_types_the_entity_from_the_declaration():
    from jobs.schemas import feature_schema

    schema = feature_schema(FS)
    assert schema.field(KEY).type == pa.string() and not schema.field(KEY).nullable
    assert schema.field("orders_1h").type == pa.int64() and schema.field("late_mean_6h").type == pa.float64()
