"""Synthetic event generator: counts, rates, heavy tail, determinism, streaming, lake output."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.projects.cdnow.purchases import CDNOW_PURCHASES
from jobs.ingest.cdnow_synthetic import (
    GeneratorParams,
    generate_events,
    iter_event_days,
    write_parquet_files,
)
from jobs.schemas import raw_schema

RAW_EVENTS = raw_schema(CDNOW_PURCHASES)
RAW_EVENTS_TABLE = CDNOW_PURCHASES.table

DAY = pd.Timedelta(days=1)
US = pd.Timedelta(microseconds=1)
BIG = {"entities": 10_000, "events": 200_000, "days": 10, "start": "2024-03-01", "seed": 7, "chunk_rows": 40_000}
SMALL = {"entities": 500, "events": 5_000, "days": 4, "seed": 3, "chunk_rows": 700}


def collect(**kw) -> pd.DataFrame:
    """All yielded rows with their partition in ``ds``; ``attrs["days"]`` lists every yielded ds."""
    items = list(iter_event_days(progress=False, **kw))
    df = pd.concat([f.assign(ds=ds) for ds, f in items], ignore_index=True)
    df.attrs["days"] = list(dict.fromkeys(ds for ds, _ in items))
    return df


def canonical(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(["event_id", "ingested_at"], ignore_index=True)


@pytest.fixture(scope="module")
def big() -> pd.DataFrame:
    return collect(**BIG)


@pytest.fixture(scope="module")
def originals(big) -> pd.DataFrame:
    """The first delivery of every event (duplicates removed)."""
    return canonical(big).drop_duplicates("event_id", keep="first").reset_index(drop=True)


def test_exact_event_count_and_ids(big, originals):
    assert len(originals) == 200_000
    assert originals["event_id"].tolist() == list(range(1, 200_001))
    assert len(big) > 200_000  # plus the re-deliveries


def test_columns_and_types(big):
    assert list(big.columns[:-1]) == RAW_EVENTS.names
    for col in ("event_ts", "ingested_at"):
        assert big[col].dtype == pd.DatetimeTZDtype("us", "UTC")
    assert big["event_id"].dtype == np.int64 and big["customer_id"].dtype == np.int64
    # microsecond precision, not whole seconds or milliseconds
    assert (big["event_ts"].dt.microsecond % 1000 != 0).mean() > 0.99


def test_partition_ds_is_the_ingest_date_and_every_day_is_emitted(big):
    bounds = big.groupby("ds")["ingested_at"].agg(["min", "max"])
    day_start = pd.to_datetime(bounds.index).tz_localize("UTC")
    assert (bounds["min"].to_numpy() >= day_start).all()
    assert (bounds["max"].to_numpy() < day_start + DAY).all()
    # 10 event days + 5 late days + 1 day for re-deliveries of the latest arrivals
    expected = [d.date().isoformat() for d in pd.date_range("2024-03-01", periods=16, freq="D")]
    assert big.attrs["days"] == expected
    # in order, each day once (its chunks are consecutive)
    nonempty = set(big["ds"].unique())
    assert list(big["ds"].unique()) == [d for d in expected if d in nonempty]
    assert GeneratorParams(**{k: v for k, v in BIG.items() if k != "chunk_rows"}).ingest_days == 16


def test_empty_ingest_days_are_emitted_as_empty_frames():
    got = list(iter_event_days(entities=5, events=3, days=10, late_rate=0.0, dup_rate=0.0, seed=1, progress=False))
    assert [ds for ds, _ in got] == [f"2024-01-{d:02d}" for d in range(1, 11)]
    sizes = [len(f) for _, f in got]
    assert sum(sizes) == 3 and sizes.count(0) >= 7
    assert all(list(f.columns) == RAW_EVENTS.names for _, f in got)


def test_event_ts_lies_in_the_event_days(originals):
    assert originals["event_ts"].min() >= pd.Timestamp("2024-03-01", tz="UTC")
    assert originals["event_ts"].max() < pd.Timestamp("2024-03-11", tz="UTC")


def test_null_rate(originals):
    assert originals["amount"].isna().mean() == pytest.approx(0.02, abs=0.003)
    assert originals["category"].notna().all()


def test_late_rate_and_lags(originals):
    end_of_day = originals["event_ts"].dt.floor("D") + DAY - US
    late = originals["ingested_at"] != end_of_day
    assert late.mean() == pytest.approx(0.03, abs=0.003)
    lag = (originals["ingested_at"] - originals["event_ts"])[late]
    assert lag.min() >= DAY and lag.max() <= 5 * DAY
    lag_days = (originals["ingested_at"].dt.floor("D") - originals["event_ts"].dt.floor("D"))[late].dt.days
    assert set(lag_days) == {1, 2, 3, 4, 5}


def test_duplicates_are_later_copies_with_identical_content(big, originals):
    counts = big["event_id"].value_counts()
    assert counts.max() == 2
    dup_ids = counts.index[counts == 2]
    assert len(dup_ids) / 200_000 == pytest.approx(0.01, abs=0.002)
    pairs = canonical(big[big["event_id"].isin(dup_ids)])
    first, copy = pairs.iloc[0::2].reset_index(drop=True), pairs.iloc[1::2].reset_index(drop=True)
    content = ["event_id", "customer_id", "event_ts", "n_items", "amount", "category"]
    pd.testing.assert_frame_equal(first[content], copy[content])
    assert (copy["ingested_at"] > first["ingested_at"]).all()
    assert (copy["ingested_at"] - first["ingested_at"] <= DAY).all()
    assert (copy["ds"] >= first["ds"]).all()
    # the first delivery follows the on-time/late rule; the copy is the extra one
    end_of_day = first["event_ts"].dt.floor("D") + DAY - US
    assert ((first["ingested_at"] == end_of_day) | (first["ingested_at"] - first["event_ts"] >= DAY)).all()


def test_tie_rate(originals):
    tied = originals.duplicated(["customer_id", "event_ts"], keep=False)
    assert tied.mean() == pytest.approx(0.05, abs=0.005)


def test_no_ties_when_tie_rate_is_zero():
    df = collect(**{**SMALL, "tie_rate": 0.0, "dup_rate": 0.0})
    assert not df.duplicated(["customer_id", "event_ts"]).any()


def test_heavy_tailed_activity(originals):
    per_entity = originals["customer_id"].value_counts()
    assert per_entity.index.min() >= 1 and per_entity.index.max() <= 10_000
    top = per_entity.iloc[: 10_000 // 100].sum() / len(originals)
    assert top > 0.10
    assert per_entity.max() > 20 * per_entity.median()


def test_amounts_items_and_categories(originals):
    amount = originals["amount"].dropna()
    assert (amount > 0).all()
    assert amount.max() > 20 * amount.median()  # heavy right tail
    assert (amount.round(2) == amount).all()
    assert (originals["n_items"] >= 1).all()
    shares = originals["category"].value_counts(normalize=True)
    assert set(shares.index) == {"free", "budget", "standard", "premium"}  # the source's allowed bands
    assert shares["standard"] > 3 * shares["free"]


def test_chunks_never_exceed_chunk_rows():
    sizes = [len(f) for _, f in iter_event_days(**{**SMALL, "chunk_rows": 333}, progress=False)]
    assert max(sizes) <= 333
    assert sum(sizes) > 5_000


def test_deterministic_per_seed_and_independent_of_chunking():
    a = collect(**SMALL)
    b = collect(**SMALL)
    pd.testing.assert_frame_equal(a, b)
    c = collect(**{**SMALL, "chunk_rows": 100_000})
    pd.testing.assert_frame_equal(canonical(a), canonical(c))


def test_a_different_seed_differs():
    a, b = collect(**SMALL), collect(**{**SMALL, "seed": 4})
    assert not a["customer_id"].equals(b["customer_id"])
    assert not a["event_ts"].equals(b["event_ts"])


@pytest.mark.parametrize(
    "bad",
    [{"null_rate": 1.5}, {"late_rate": 0.1, "max_late_days": 0}, {"days": 0}, {"seed": -1}, {"start": "2024-13-01"}],
)
def test_bad_parameters_are_rejected(bad):
    with pytest.raises(ValueError):
        list(iter_event_days(**{**SMALL, **bad}, progress=False))


def test_streaming_keeps_memory_bounded():
    # 3M events in one day: that day's numeric columns alone are 3M x 6 x 8 B = 144 MB, while
    # streaming holds one 64k-row block, one chunk and the late/duplicate rows (~20-30 MB).
    kw = {"entities": 100_000, "events": 3_000_000, "days": 1, "seed": 11, "chunk_rows": 20_000}
    day_bytes = 3_000_000 * 6 * 8
    rows, biggest = 0, 0
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        for _, frame in iter_event_days(progress=False, **kw):
            rows += len(frame)
            biggest = max(biggest, len(frame))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rows > 3_000_000
    assert biggest <= 20_000
    assert peak - base < day_bytes / 3, f"peak {(peak - base) / 2**20:.1f} MiB"


# ---- lake and Parquet output -----------------------------------------------------------------


@pytest.fixture()
def lake(tmp_path):
    from jobs.lake import Lake

    return Lake(str(tmp_path / "lake"))


def test_generate_events_writes_one_partition_per_ingest_day(lake):
    manifests = generate_events(lake, **SMALL)
    expected = collect(**SMALL)
    days = expected.attrs["days"]
    assert len(days) == 4 + 5 + 1
    assert [m.ds for m in manifests] == days == lake.table(RAW_EVENTS_TABLE).partitions()
    sizes = expected.groupby("ds").size()
    assert [m.rows for m in manifests] == [int(sizes.get(ds, 0)) for ds in days]
    assert manifests[0].producer["job"] == "generate_events"
    assert manifests[0].producer["params"]["seed"] == 3
    back = lake.table(RAW_EVENTS_TABLE).read(days[0], days[-1])
    pd.testing.assert_frame_equal(canonical(back), canonical(expected.drop(columns="ds")))


def test_generate_events_is_deterministic_by_fingerprint(lake, tmp_path):
    from jobs.lake import Lake

    first = generate_events(lake, **SMALL)
    again = generate_events(Lake(str(tmp_path / "other")), **{**SMALL, "chunk_rows": 50})
    other = generate_events(Lake(str(tmp_path / "third")), **{**SMALL, "seed": 4})
    fp = [m.content_fingerprint for m in first]
    assert fp == [m.content_fingerprint for m in again]
    rows = [m.rows for m in first]
    assert len({f for f, n in zip(fp, rows) if n}) == sum(1 for n in rows if n)
    assert all(a.content_fingerprint != b.content_fingerprint for a, b in zip(first, other) if a.rows)


def test_write_parquet_files(tmp_path):
    paths = write_parquet_files(tmp_path / "bench", **SMALL, progress=False)
    expected = collect(**SMALL)
    assert len(paths) == len(expected.attrs["days"]) == 10
    assert paths[0].endswith("ds=2024-01-01/part-00000.parquet")
    schema = pq.read_schema(paths[0])
    assert schema.field("event_ts").type == pa.timestamp("us", tz="UTC")
    back = pd.concat([pq.read_table(p).to_pandas() for p in paths], ignore_index=True)
    assert pq.ParquetFile(paths[0]).metadata.num_row_groups >= 2  # one per chunk of 700 rows
    pd.testing.assert_frame_equal(canonical(back), canonical(expected.drop(columns="ds")))
