"""The one kernel on every engine: local == Dask == Spark == online, bit for bit.

Reference: ``features.kernel.compute(all events, all queries)`` called directly.
Every engine's yielded frames, concatenated and sorted, must equal it with
``check_exact=True`` (values and dtypes); the online path (``compute_one`` given
only one entity's events) must equal it on a sample of queries.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features import kernel
from features.online import compute_one
from features.registry import get
from jobs import engines
from jobs.engines import Snapshot
from jobs.engines.bucketing import (
    as_int64_keys,
    bucket_frame,
    bucket_of,
    bucket_parquet_files,
    file_groups,
    read_frame,
)
from jobs.ingest.cdnow_synthetic import to_raw_events

FS = get("customer_activity_v1")
KEY = FS.entity
MODES = ("known_at", "as_of")
ENGINES = (
    "local",
    pytest.param("dask", marks=pytest.mark.dask),
    pytest.param("spark", marks=pytest.mark.spark),
)
REPO = Path(__file__).resolve().parents[3]


# --------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="module")
def cdnow(data_dir):
    """The full CDNOW log as 3 Parquet files (the cdnow_purchases raw schema), plus the frame."""
    from jobs.ingest.cdnow import read_cdnow

    events = read_cdnow()
    files = []
    for i, idx in enumerate(np.array_split(np.arange(len(events)), 3)):
        path = data_dir / f"cdnow-{i}.parquet"
        pq.write_table(to_raw_events(events.iloc[idx]), path)
        files.append(str(path))
    return events, files


@pytest.fixture(scope="module")
def generated(data_dir):
    """~200k generated events with high rates of nulls, ties, duplicates and late rows."""
    from jobs.ingest.cdnow_synthetic import write_parquet_files

    files = write_parquet_files(
        data_dir / "gen",
        entities=4_000,
        events=200_000,
        days=40,
        seed=7,
        null_rate=0.05,
        dup_rate=0.05,
        late_rate=0.10,
        max_late_days=5,
        tie_rate=0.10,
        progress=False,
    )
    events = pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)
    assert events["event_id"].duplicated().sum() > 1000  # the awkward cases are really there
    assert events["amount"].isna().sum() > 1000
    assert ((events["ingested_at"] - events["event_ts"]) > pd.Timedelta(days=1)).sum() > 1000
    return events, files


def random_queries(events: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """(entity, as_of) rows at random times of day over the data's span, with pass-through columns.

    Includes unknown entities, repeated rows and as_of exactly on event timestamps.
    """
    rng = np.random.default_rng(seed)
    ids = events[KEY].unique()
    lo = events["event_ts"].min().value // 1000
    hi = (events["event_ts"].max() + pd.Timedelta(days=30)).value // 1000
    ent = rng.choice(ids, n)
    us = rng.integers(lo, hi, n)
    on_event = events.sample(n // 10, random_state=seed)  # as_of == an event's own timestamp
    ent = np.r_[ent, on_event[KEY].to_numpy(), [-1, 2**31 - 1]]
    us = np.r_[us, kernel.to_us(on_event["event_ts"]), lo, hi]
    q = pd.DataFrame({KEY: ent.astype(np.int64), "as_of": pd.to_datetime(us, unit="us", utc=True)})
    q = pd.concat([q, q.iloc[:5]], ignore_index=True)  # repeated queries
    q.insert(0, "qid", np.arange(len(q), dtype=np.int64))
    q["label"] = np.where(q["qid"] % 3 == 0, None, "L" + (q["qid"] % 7).astype(str))
    q["label"] = q["label"].astype("str")
    q["weight"] = np.where(q["qid"] % 5 == 0, np.nan, q["qid"] / 7.0)
    q["seen_at"] = (q["as_of"] - pd.to_timedelta(q["qid"] * 997, unit="s")).dt.as_unit("us")
    return q


def sort(df: pd.DataFrame) -> pd.DataFrame:
    keys = [KEY, "as_of"] + (["qid"] if "qid" in df.columns else [])
    return df.sort_values(keys, kind="stable", ignore_index=True)


def run_engine(engine, make_config, dask_client, spark, events_files, queries, mode, buckets=8):
    cfg = make_config(engine, buckets=buckets)
    opts = {"client": dask_client} if engine == "dask" else {}
    frames = list(engines.run(cfg, FS, events_files, queries, mode, **opts))
    assert frames and all(isinstance(f, pd.DataFrame) for f in frames)
    scratch = Path(cfg.lake_root) / "_scratch"
    assert not scratch.exists() or not any(scratch.iterdir()), "scratch left behind"
    return pd.concat(frames, ignore_index=True)


@pytest.fixture
def engine_fixtures(request):
    """The cluster fixtures an engine needs (only those, so local tests start no cluster)."""
    engine = request.node.callspec.params["engine"]
    dask_client = request.getfixturevalue("dask_client") if engine == "dask" else None
    spark = request.getfixturevalue("spark") if engine == "spark" else None
    return dask_client, spark


def assert_same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == list(want.columns)
    pd.testing.assert_frame_equal(sort(got), sort(want), check_exact=True)


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("engine", ENGINES)
def test_cdnow_snapshots(engine, mode, cdnow, make_config, engine_fixtures):
    events, files = cdnow
    for day in ("1997-01-15", "1997-09-30 12:00", "1998-07-01"):
        want = kernel.compute(events, kernel.snapshot_queries(events, FS, pd.Timestamp(day, tz="UTC"), mode), FS, mode)
        assert len(want) > 1000
        got = run_engine(engine, make_config, *engine_fixtures, files, Snapshot(pd.Timestamp(day)), mode)
        assert_same(got, want)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("engine", ENGINES)
def test_cdnow_query_frame(engine, mode, cdnow, make_config, engine_fixtures):
    events, files = cdnow
    queries = random_queries(events, 5_000, seed=1)
    want = kernel.compute(events, queries, FS, mode)
    got = run_engine(engine, make_config, *engine_fixtures, files, queries, mode)
    assert_same(got, want)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("engine", ENGINES)
def test_generated_snapshot_and_query_files(engine, mode, generated, data_dir, make_config, engine_fixtures):
    """Query files with int32 keys (events are int64): the key is cast before bucketing on every engine."""
    events, files = generated
    day = pd.Timestamp("2024-01-25 00:00", tz="UTC")
    want = kernel.compute(events, kernel.snapshot_queries(events, FS, day, mode), FS, mode)
    got = run_engine(engine, make_config, *engine_fixtures, files, Snapshot(day), mode)
    assert_same(got, want)

    queries = random_queries(events, 5_000, seed=2)
    q_files = []
    for i, part in enumerate((queries.iloc[::2], queries.iloc[1::2])):
        path = data_dir / f"gen-queries-{mode}-{engine}-{i}.parquet"
        table = pa.Table.from_pandas(part.astype({KEY: np.int32}), preserve_index=False)
        assert table.schema.field(KEY).type == pa.int32()
        pq.write_table(table, path)
        q_files.append(str(path))
    want = kernel.compute(events, queries, FS, mode)
    got = run_engine(engine, make_config, *engine_fixtures, files, q_files, mode, buckets=16)
    assert_same(got, want)


@pytest.mark.parametrize("prebuilt", [False, True], ids=["frame", "index"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("which", ["cdnow", "generated"])
def test_online_matches_offline(which, mode, prebuilt, request):
    """compute_one, one entity at a time given only that entity's events (or the per-entity index
    the service caches), == the batch reference."""
    events, _ = request.getfixturevalue(which)
    queries = random_queries(events, 200, seed=3)
    want = sort(kernel.compute(events, queries, FS, mode))
    by_entity = dict(tuple(events[events[KEY].isin(want[KEY])].groupby(KEY, sort=False)))
    empty = events.iloc[:0]
    if prebuilt:
        indexes = {e: kernel.index_events(frame, FS) for e, frame in by_entity.items()}
        by_entity, empty = indexes, kernel.index_events(empty, FS)
    rows = [compute_one(by_entity.get(e, empty), e, t, FS, mode) for e, t in zip(want[KEY], want["as_of"])]
    got = pd.DataFrame(rows, columns=list(FS.feature_names))
    dtypes = {f.name: "int64" if f.is_integer else "float64" for f in FS.features}
    got = got.astype(dtypes)
    assert got.notna().to_numpy().sum() > 0
    pd.testing.assert_frame_equal(got, want[list(FS.feature_names)], check_exact=True)


# --------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("engine", ENGINES)
def test_empty_results_keep_the_schema(engine, cdnow, make_config, engine_fixtures):
    """No visible entity / no queries: one empty frame with compute()'s columns and dtypes."""
    events, files = cdnow
    before = pd.Timestamp("1990-01-01", tz="UTC")
    want = kernel.compute(events, kernel.snapshot_queries(events, FS, before), FS)
    got = run_engine(engine, make_config, *engine_fixtures, files, Snapshot(before), "known_at")
    assert len(got) == 0
    assert list(got.columns) == list(want.columns)
    assert got.dtypes.to_dict() == want.dtypes.to_dict()


@pytest.mark.parametrize("engine", ENGINES)
def test_naive_timestamps_are_utc(engine, cdnow, tmp_path, make_config, engine_fixtures):
    """Naive Parquet timestamps (Spark: TIMESTAMP_NTZ, not LTZ) and naive query times mean UTC."""
    events, _ = cdnow
    naive = events.iloc[:20_000].copy()
    for c in ("event_ts", "ingested_at"):
        naive[c] = naive[c].dt.tz_localize(None)
    path = tmp_path / "naive.parquet"
    pq.write_table(pa.Table.from_pandas(naive, preserve_index=False), path)
    assert pq.read_schema(path).field("event_ts").type == pa.timestamp("us")
    queries = random_queries(naive.assign(event_ts=naive["event_ts"].dt.tz_localize("UTC")), 2_000, seed=4)
    queries["as_of"] = queries["as_of"].dt.tz_localize(None)
    want = kernel.compute(events.iloc[:20_000], queries.assign(as_of=queries["as_of"].dt.tz_localize("UTC")), FS)
    got = run_engine(engine, make_config, *engine_fixtures, [str(path)], queries, "known_at")
    assert str(got["as_of"].dtype) == "datetime64[us, UTC]"
    assert_same(got, want)


def test_run_rejects_bad_arguments(make_config, cdnow):
    _, files = cdnow
    with pytest.raises(ValueError, match="mode"):
        engines.run(make_config(), FS, files, Snapshot("1998-01-01"), "event_time")
    with pytest.raises(KeyError, match="as_of"):
        engines.run(make_config(), FS, files, pd.DataFrame({KEY: [1]}), "known_at")
    with pytest.raises(TypeError):
        engines.run(make_config(), FS, files[0], Snapshot("1998-01-01"), "known_at")


def test_snapshot_as_of_is_utc():
    assert Snapshot("1998-01-01").as_of == pd.Timestamp("1998-01-01", tz="UTC")
    assert Snapshot(pd.Timestamp("1998-01-01 01:00", tz="Europe/Paris")).as_of == pd.Timestamp("1998-01-01", tz="UTC")
    assert str(Snapshot("1998-01-01").as_of.tz) == "UTC"


def test_importing_engines_imports_no_cluster_library():
    code = "import sys, jobs.engines; print(sorted(m for m in ('pyspark', 'distributed') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


@pytest.mark.dask
def test_dask_consumer_stopping_early_cleans_scratch(cdnow, make_config, dask_client):
    _, files = cdnow
    cfg = make_config("dask", buckets=8)
    frames = engines.run(cfg, FS, files, Snapshot("1998-01-01"), "known_at", client=dask_client)
    first = next(frames)
    assert len(first) > 0
    scratch = Path(cfg.lake_root) / "_scratch"
    assert any(scratch.iterdir())
    frames.close()
    assert not any(scratch.iterdir())


@pytest.mark.dask
def test_dask_engine_starts_and_closes_its_own_cluster(cdnow, tmp_path):
    """No client, no address, no default client: a LocalCluster is created for the run."""
    _, files = cdnow
    code = textwrap.dedent(f"""
        import pandas as pd
        from distributed import default_client
        from features.registry import get
        from jobs import engines
        from jobs.config import Config
        if __name__ == "__main__":
            cfg = Config(lake_root={str(tmp_path / "lake")!r}, engine="dask", dask_workers=1,
                         dask_memory_limit="1GiB", buckets=4)
            out = pd.concat(engines.run(cfg, get("customer_activity_v1"), {files!r},
                                        engines.Snapshot("1998-01-01"), "known_at"))
            try:
                default_client()
                print("client still open")
            except ValueError:
                print(len(out))
    """)
    script = tmp_path / "run_dask.py"
    script.write_text(code)
    out = subprocess.run(
        [sys.executable, str(script)], check=False, capture_output=True, text=True, cwd=REPO, timeout=180
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "23570"


# --------------------------------------------------------------------------- bucketing


def test_bucket_is_independent_of_the_key_dtype():
    keys = np.r_[np.arange(-1000, 1000), [2**31 - 1, -(2**31)]]
    want = bucket_of(keys.astype(np.int64), 16)
    for variant in (
        keys.astype(np.int32),
        pd.Series(keys, dtype="Int64"),
        pa.array(keys, pa.int32()),
        pa.chunked_array([keys[:10], keys[10:]]),
        keys.astype(np.float64),
    ):
        np.testing.assert_array_equal(bucket_of(variant, 16), want)
    assert set(want) == set(range(16))
    counts = np.bincount(bucket_of(np.arange(160_000), 16))
    assert counts.min() > 9_000 and counts.max() < 11_000  # sequential ids spread evenly


def test_bucket_puts_null_keys_in_bucket_0_and_rejects_fractions():
    # a nullable key: an event without it belongs to no entity (the kernel skips it)
    assert bucket_of(pd.Series([None, None], dtype="Int64"), 4).tolist() == [0, 0]
    assert bucket_of(pd.Series([7, None], dtype="Int64"), 4)[0] == bucket_of(np.array([7]), 4)[0]
    with pytest.raises(ValueError, match="null"):
        as_int64_keys(pd.Series([1, None], dtype="Int64"))
    with pytest.raises(ValueError, match="integers"):
        bucket_of(np.array([1.5]), 4)


def test_streaming_bucketing_puts_each_entity_in_exactly_one_bucket(generated, tmp_path):
    """int32 and int64 files of the same rows land in the same buckets; rows are kept exactly."""
    events, files = generated
    root = str(tmp_path / "buckets")
    n = 8
    src32 = tmp_path / "int32.parquet"
    pq.write_table(to_raw_events(events).cast(to_raw_events(events).schema.set(1, pa.field(KEY, pa.int32()))), src32)
    written = bucket_parquet_files([str(src32)], root, 0, n, KEY, list(FS.event_columns), batch_rows=10_000)
    written64 = bucket_parquet_files([files[3]], root, 1, n, KEY, list(FS.event_columns))
    assert set(written) == set(range(n))
    seen: dict[int, int] = {}
    for b in range(n):
        paths = [*written.get(b, []), *written64.get(b, [])]
        assert all(f"/bucket={b}/" in p for p in paths)
        part = read_frame(paths, KEY)
        assert part[KEY].dtype == np.int64
        assert (bucket_of(part[KEY], n) == b).all()
        for e in part[KEY].unique():
            assert seen.setdefault(int(e), b) == b, f"entity {e} in buckets {seen[int(e)]} and {b}"
    whole = read_frame([p for b in range(n) for p in written.get(b, [])], KEY)
    cols = list(FS.event_columns)
    a = whole.sort_values(["event_id", "ingested_at"], ignore_index=True)[cols]
    b = events.sort_values(["event_id", "ingested_at"], ignore_index=True)[cols]
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_a_group_of_files_typed_differently_buckets_into_one_part_per_schema(generated, tmp_path):
    """One task streams several files (``file_groups``); a file whose columns are typed otherwise
    (int32 keys and amounts) goes to files of its own, and the bucket reads back every row."""
    events, files = generated
    raw = to_raw_events(events)
    src32 = tmp_path / "int32.parquet"
    pq.write_table(
        raw.cast(
            raw.schema.set(1, pa.field(KEY, pa.int32())).set(
                raw.schema.get_field_index("amount"), pa.field("amount", pa.float32())
            )
        ),
        src32,
    )
    groups = file_groups([files[3], str(src32), files[4]], 1)
    assert groups == [[files[3], str(src32), files[4]]]
    written = bucket_parquet_files(groups[0], str(tmp_path / "b"), 0, 4, KEY, list(FS.event_columns))
    assert any(len(paths) > 1 for paths in written.values())  # the int32 file's rows: files of their own
    got = read_frame([p for paths in written.values() for p in paths], KEY)
    want = pd.concat([pq.read_table(p, columns=list(FS.event_columns)).to_pandas() for p in groups[0]])
    assert len(got) == len(want) and got[KEY].dtype == np.int64
    assert sorted(got["event_id"]) == sorted(want["event_id"])
    assert [len(g) for g in file_groups([str(i) for i in range(10)], 4)] == [2, 3, 3, 2]
    assert file_groups([], 4) == [] and file_groups(["a"], 0) == [["a"]]


def test_bucket_frame_round_trips_pass_through_dtypes(tmp_path):
    df = pd.DataFrame(
        {
            KEY: np.arange(50, dtype=np.int32),
            "as_of": pd.Timestamp("2024-01-01", tz="UTC"),
            "n": pd.array(range(50), dtype="Int64"),
            "s": ["x"] * 50,
        }
    )
    written = bucket_frame(df, str(tmp_path), 0, 4, KEY)
    back = read_frame([p for ps in written.values() for p in ps], KEY, decode_dictionaries=False).sort_values(
        KEY, ignore_index=True
    )
    pd.testing.assert_frame_equal(back, df.astype({KEY: np.int64}), check_exact=True)


# --------------------------------------------------------------------------- time zones

TZ_SCRIPT = """
import json, sys, time
import pandas as pd
from features.registry import get
from jobs import engines
from jobs.config import Config
from jobs.engines import spark_engine

# A hostile environment: Python (TZ env), the JVM default zone and the session zone all New York.
spark = spark_engine.get_spark("local[2]", {
    "spark.driver.extraJavaOptions": "-Duser.timezone=America/New_York",
    "spark.executor.extraJavaOptions": "-Duser.timezone=America/New_York",
})
print("python", time.tzname, "jvm", spark._jvm.java.util.TimeZone.getDefault().getID())
lake, events = sys.argv[1:3]
cfg = Config(lake_root=lake, engine="spark", buckets=4)
for queries, mode, out in json.loads(sys.argv[3]):
    spark.conf.set("spark.sql.session.timeZone", "America/New_York")
    q = [queries] if queries.endswith(".parquet") else engines.Snapshot(queries)
    pd.concat(engines.run(cfg, get("customer_activity_v1"), [events], q, mode)).to_parquet(out)
"""


@pytest.mark.spark
def test_spark_ignores_non_utc_zones_across_dst(tmp_path):
    """Events and queries every 20 minutes across both 2024 US DST changes, in a New York JVM/Python."""
    rng = np.random.default_rng(5)
    ts = pd.concat(
        [
            pd.Series(pd.date_range(s, e, freq="20min", tz="UTC"))
            for s, e in (("2024-03-09", "2024-03-11 12:00"), ("2024-11-02", "2024-11-04 12:00"))
        ],
        ignore_index=True,
    )
    n = len(ts)
    events = pd.DataFrame(
        {
            "event_id": np.arange(n, dtype=np.int64),
            KEY: rng.integers(0, 5, n).astype(np.int64),
            "event_ts": ts.dt.as_unit("us"),
            "ingested_at": (ts + pd.to_timedelta(rng.integers(0, 3 * 3600, n), unit="s")).dt.as_unit("us"),
            "n_items": rng.integers(1, 4, n).astype(np.int64),
            "amount": np.round(rng.uniform(1, 50, n), 2),
            "category": rng.choice(["a", "b", "c"], n),
        }
    )
    ev_path = tmp_path / "events.parquet"
    pq.write_table(to_raw_events(events), ev_path)
    queries = pd.DataFrame(
        {KEY: np.arange(n, dtype=np.int64) % 6, "as_of": (ts + pd.Timedelta(minutes=7)).dt.as_unit("us")}
    )
    q_path = tmp_path / "queries.parquet"
    pq.write_table(pa.Table.from_pandas(queries, preserve_index=False), q_path)
    snap = "2024-11-03 06:30"  # 01:30 in New York, inside the repeated hour

    jobs, wants = [], []
    for q_arg, want_q, mode in (
        (str(q_path), queries, "known_at"),
        (snap, kernel.snapshot_queries(events, FS, pd.Timestamp(snap, tz="UTC"), "as_of"), "as_of"),
    ):
        jobs.append((q_arg, mode, str(tmp_path / f"out-{len(jobs)}.parquet")))
        wants.append(kernel.compute(events, want_q, FS, mode))
    env = {**os.environ, "TZ": "America/New_York"}
    res = subprocess.run(
        [sys.executable, "-c", TZ_SCRIPT, str(tmp_path / "lake"), str(ev_path), json.dumps(jobs)],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "'EST', 'EDT'" in res.stdout and "jvm America/New_York" in res.stdout, res.stdout
    for (_, _, out), want in zip(jobs, wants):
        assert want["txn_count_7d"].sum() > 0 and len(want) > 4
        pd.testing.assert_frame_equal(sort(pd.read_parquet(out)), sort(want), check_exact=True)
