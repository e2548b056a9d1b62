"""The lake: round trips, schema casts, streaming writes, fingerprints, verification, crashes, and
re-writes of a validated day staged as candidates (promoted or rejected, the good version readable)."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.lake import (
    CANDIDATE,
    MANIFEST,
    CorruptPartitionError,
    Lake,
    LakeError,
    Manifest,
    MissingPartitionError,
    write_id,
)

REPO = Path(__file__).resolve().parents[2]
PRODUCER = {"job": "test", "code_version": "0"}
SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.int64(), nullable=False),
        pa.field("event_ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("n_items", pa.int64()),
        pa.field("amount", pa.float64()),
        pa.field("category", pa.string()),
    ]
)


@pytest.fixture
def lake(tmp_path):
    return Lake(str(tmp_path / "lake"))


def events(n=6, start=0):
    """n rows with nulls in every nullable column and tz-aware microsecond timestamps."""
    ids = np.arange(start, start + n, dtype="int64")
    return pd.DataFrame(
        {
            "event_id": ids,
            "event_ts": pd.Series(
                pd.Timestamp("1997-01-01 00:00:00.000001", tz="UTC") + pd.to_timedelta(ids * 1_000_003, unit="us")
            ).astype("datetime64[us, UTC]"),
            "n_items": pd.array([None if i % 3 == 0 else int(i) for i in ids], dtype="Int64"),
            "amount": [np.nan if i % 4 == 1 else i * 1.25 for i in ids],
            "category": pd.Series([None if i % 5 == 2 else f"cat-{i % 4}" for i in ids], dtype=object),
        }
    )


def disk_names(table, ds):
    return sorted(os.listdir(table.partition_path(ds)))


# ---- round trips and storage format ---------------------------------------------------------------
def test_round_trip_values_timestamps_nulls_strings(lake):
    t = lake.table("raw_events", SCHEMA)
    df = events(10)
    m = t.write_partition("1997-01-01", df, producer=PRODUCER, inputs={"src/ds=1997-01-01": "abc"})
    got = t.read("1997-01-01")
    assert str(got["event_ts"].dtype) == "datetime64[us, UTC]"
    assert got["event_ts"].tolist() == df["event_ts"].tolist()
    assert got["event_ts"].iloc[3] == pd.Timestamp("1997-01-01 00:00:03.000010", tz="UTC")
    assert got["event_id"].tolist() == list(range(10))
    assert got["n_items"].isna().tolist() == [i % 3 == 0 for i in range(10)]
    assert got["n_items"].dropna().tolist() == [1, 2, 4, 5, 7, 8]
    assert got["amount"].isna().tolist() == [i % 4 == 1 for i in range(10)]
    assert got["amount"].iloc[2] == 2.5
    assert got["category"].isna().tolist() == [i % 5 == 2 for i in range(10)]
    assert got["category"].iloc[3] == "cat-3"
    assert list(got.columns) == SCHEMA.names and isinstance(got.index, pd.RangeIndex)
    assert (m.rows, m.producer, m.inputs) == (10, PRODUCER, {"src/ds=1997-01-01": "abc"})
    assert m.schema[1] == {"name": "event_ts", "type": "timestamp[us, tz=UTC]", "nullable": False}
    assert Manifest.from_json(m.to_json()) == m == t.manifest("1997-01-01")
    assert m.created_at.endswith("+00:00")


def test_parquet_format_us_utc_zstd_dictionary_only_for_strings(lake):
    t = lake.table("raw_events", SCHEMA)
    t.write_partition("1997-01-01", events(50), producer=PRODUCER)
    (path,) = t.files("1997-01-01")
    assert os.path.basename(path).startswith("part-") and path.endswith("-00000.parquet")
    pf = pq.ParquetFile(path)
    ts = pf.schema.column(1).logical_type
    assert "isAdjustedToUTC=true" in str(ts) and "microseconds" in str(ts)
    rg = pf.metadata.row_group(0)
    for i, name in enumerate(SCHEMA.names):
        col = rg.column(i)
        assert col.compression == "ZSTD"
        assert ("RLE_DICTIONARY" in col.encodings) == (name == "category"), name


def test_memory_filesystem_round_trip():
    lake = Lake(f"memory://lake-{uuid.uuid4().hex}")
    t = lake.table("raw_events", SCHEMA)
    m = t.write_partition("1997-01-02", iter([events(4), events(3, start=4)]), producer=PRODUCER, rows_per_file=5)
    files = t.files("1997-01-02")
    assert len(files) == 2 and all(f.startswith("memory:///lake-") for f in files)
    pd.testing.assert_frame_equal(t.read("1997-01-02"), lake.table("raw_events").read("1997-01-02"))
    assert t.read("1997-01-02")["event_id"].tolist() == list(range(7))
    assert t.partitions() == ["1997-01-02"] and m.rows == 7
    # verification works on a non-local filesystem too
    lake.fs.pipe_file(files[1], lake.fs.cat_file(files[1])[:-10])
    with pytest.raises(CorruptPartitionError, match="size"):
        t.read("1997-01-02")


def test_empty_partition_round_trip(lake):
    t = lake.table("raw_events", SCHEMA)
    m = t.write_partition("1997-01-03", iter([]), producer=PRODUCER)
    assert m.rows == 0 and len(m.files) == 1 and m.files[0]["rows"] == 0
    got = t.read("1997-01-03")
    assert len(got) == 0 and list(got.columns) == SCHEMA.names
    assert str(got["event_ts"].dtype) == "datetime64[us, UTC]"
    batches = list(t.iter_batches("1997-01-03"))
    assert len(batches) == 1 and len(batches[0]) == 0 and list(batches[0].columns) == SCHEMA.names
    # without any schema there is nothing to publish
    with pytest.raises(LakeError, match="no schema"):
        lake.table("untyped").write_partition("1997-01-03", [], producer=PRODUCER)
    assert not lake.table("untyped").exists("1997-01-03")


# ---- schema -------------------------------------------------------------------------------------------
def test_schema_cast_selects_and_casts(lake):
    t = lake.table("raw_events", SCHEMA)
    df = events(4)
    df["event_id"] = df["event_id"].astype("int32")
    df["event_ts"] = df["event_ts"].dt.tz_convert("America/New_York")  # same instants
    df["extra"] = "dropped"
    t.write_partition("1997-01-01", df[["extra"] + SCHEMA.names[::-1]], producer=PRODUCER)
    got = t.read("1997-01-01")
    assert list(got.columns) == SCHEMA.names
    assert got["event_id"].dtype == np.int64
    assert got["event_ts"].tolist() == events(4)["event_ts"].tolist()
    naive = events(4)
    naive["event_ts"] = naive["event_ts"].dt.tz_localize(None)  # naive means UTC
    t.write_partition("1997-01-02", naive, producer=PRODUCER)
    assert t.read("1997-01-02")["event_ts"].tolist() == events(4)["event_ts"].tolist()


def test_schema_errors_name_table_ds_and_column(lake):
    t = lake.table("raw_events", SCHEMA)
    with pytest.raises(LakeError) as err:
        t.write_partition("1997-01-01", events(3).drop(columns=["amount"]), producer=PRODUCER)
    assert "'raw_events'" in str(err.value) and "1997-01-01" in str(err.value)
    assert "'amount'" in str(err.value) and "missing" in str(err.value)
    bad = events(3).assign(n_items=["1", "two", "3"])
    with pytest.raises(LakeError, match=r"raw_events.*1997-01-01.*'n_items'.*cast"):
        t.write_partition("1997-01-01", bad, producer=PRODUCER)
    nulls = events(3).assign(event_id=[1, None, 3])
    with pytest.raises(LakeError, match=r"'event_id' is not nullable but has 1 nulls"):
        t.write_partition("1997-01-01", nulls, producer=PRODUCER)
    assert t.partitions() == []
    assert os.listdir(t.partition_path("1997-01-01")) == []  # failed writes leave nothing behind


def test_bad_ds_rejected(lake):
    t = lake.table("raw_events", SCHEMA)
    for ds in ("1997-1-1", "1997-02-30", "19970101", "../x"):
        with pytest.raises(LakeError, match="YYYY-MM-DD"):
            t.write_partition(ds, events(1), producer=PRODUCER)
    with pytest.raises(LakeError):
        lake.table("../escape")


# ---- streaming -----------------------------------------------------------------------------------------
def test_streaming_write_rolls_files_and_manifest_lists_them(lake):
    t = lake.table("raw_events", SCHEMA)
    seen_on_disk = []

    def chunks():
        for i in range(5):
            # by the time chunk 3 is requested, 14 rows went out: the first file must be closed
            if i == 2:
                seen_on_disk.extend(n for n in disk_names(t, "1997-01-01") if n.endswith(".parquet"))
            chunk = events(7, start=7 * i)
            yield chunk if i % 2 else pa.Table.from_pandas(chunk)

    m = t.write_partition("1997-01-01", chunks(), producer=PRODUCER, rows_per_file=10)
    assert [f["rows"] for f in m.files] == [10, 10, 10, 5]
    assert [f["name"][-13:] for f in m.files] == [f"{i:05d}.parquet" for i in range(4)]
    assert len({f["name"].split("-")[1] for f in m.files}) == 1  # one write id
    assert seen_on_disk and seen_on_disk[0] == m.files[0]["name"]
    assert disk_names(t, "1997-01-01") == sorted([MANIFEST] + [f["name"] for f in m.files])
    for f in m.files:
        path = os.path.join(t.partition_path("1997-01-01"), f["name"])
        assert os.path.getsize(path) == f["bytes"]
        assert pq.ParquetFile(path).metadata.num_rows == f["rows"]
    assert t.read("1997-01-01")["event_id"].tolist() == list(range(35))
    batches = list(t.iter_batches("1997-01-01", batch_size=4, columns=["event_id"]))
    assert max(map(len, batches)) <= 4 and list(batches[0].columns) == ["event_id"]
    assert pd.concat(batches)["event_id"].tolist() == list(range(35))


# ---- fingerprints and idempotence -------------------------------------------------------------------
def test_fingerprint_is_order_and_chunk_independent(lake):
    t = lake.table("raw_events", SCHEMA)
    df = events(40)
    base = t.write_partition("1997-01-01", df, producer=PRODUCER).content_fingerprint
    shuffled = df.sample(frac=1, random_state=7).reset_index(drop=True)
    rechunked = [pa.Table.from_pandas(shuffled.iloc[:13]), shuffled.iloc[13:14], shuffled.iloc[14:]]
    again = t.write_partition("1997-01-02", rechunked, producer={"other": 1}, rows_per_file=9)
    assert again.content_fingerprint == base
    # the untyped path gets the same normalisation from pandas and from arrow input
    u = lake.table("untyped")
    fa = u.write_partition("1997-01-01", pa.Table.from_pandas(df), producer=PRODUCER)
    fb = u.write_partition("1997-01-02", iter([shuffled.iloc[:20], shuffled.iloc[20:]]), producer=PRODUCER)
    assert fa.content_fingerprint == fb.content_fingerprint


@pytest.mark.parametrize(
    "column,row,value",
    [
        ("event_id", 5, 1000),
        ("amount", 0, 0.0001),
        ("category", 3, "cat-9"),
        ("category", 3, None),
        ("n_items", 0, 0),
        ("event_ts", 7, pd.Timestamp("2001-01-01", tz="UTC")),
    ],
)
def test_fingerprint_changes_with_one_value(lake, column, row, value):
    t = lake.table("raw_events", SCHEMA)
    df = events(20)
    base = t.write_partition("1997-01-01", df, producer=PRODUCER).content_fingerprint
    changed = df.copy()
    changed.loc[row, column] = value
    assert t.write_partition("1997-01-02", changed, producer=PRODUCER).content_fingerprint != base


def test_fingerprint_differs_for_swapped_values_and_dropped_row(lake):
    t = lake.table("raw_events", SCHEMA)
    df = events(20)
    base = t.write_partition("1997-01-01", df, producer=PRODUCER).content_fingerprint
    swapped = df.copy()
    swapped.loc[[2, 3], "category"] = swapped.loc[[3, 2], "category"].to_numpy()
    assert t.write_partition("1997-01-02", swapped, producer=PRODUCER).content_fingerprint != base
    assert t.write_partition("1997-01-03", df.iloc[1:], producer=PRODUCER).content_fingerprint != base


def test_rewrite_replaces_partition_whole_and_is_idempotent(lake):
    t = lake.table("raw_events", SCHEMA)
    old = t.write_partition("1997-01-01", events(25), producer=PRODUCER, rows_per_file=10)
    new = t.write_partition("1997-01-01", events(3, start=100), producer=PRODUCER)
    assert disk_names(t, "1997-01-01") == sorted([MANIFEST, new.files[0]["name"]])
    assert not {f["name"] for f in old.files} & set(disk_names(t, "1997-01-01"))
    assert t.manifest("1997-01-01").rows == 3
    assert t.read("1997-01-01")["event_id"].tolist() == [100, 101, 102]
    again = t.write_partition("1997-01-01", events(3, start=100), producer=PRODUCER)
    assert again.content_fingerprint == new.content_fingerprint
    assert again.files[0]["name"] != new.files[0]["name"]
    assert disk_names(t, "1997-01-01") == sorted([MANIFEST, again.files[0]["name"]])


def test_failed_overwrite_keeps_previous_version(lake):
    t = lake.table("raw_events", SCHEMA)
    old = t.write_partition("1997-01-01", events(5), producer=PRODUCER)

    def chunks():
        yield events(5, start=50)
        raise RuntimeError("source went away")

    with pytest.raises(RuntimeError, match="source went away"):
        t.write_partition("1997-01-01", chunks(), producer=PRODUCER, rows_per_file=2)
    assert t.manifest("1997-01-01") == old
    assert disk_names(t, "1997-01-01") == sorted([MANIFEST, old.files[0]["name"]])


# ---- reading verifies ------------------------------------------------------------------------------
def test_partitions_listing_first_last(lake):
    t = lake.table("raw_events", SCHEMA)
    assert t.partitions() == [] and t.first_ds() is None and t.last_ds() is None
    for ds in ("1997-01-05", "1997-01-01", "1997-01-03"):
        t.write_partition(ds, events(2), producer=PRODUCER)
    assert t.partitions() == ["1997-01-01", "1997-01-03", "1997-01-05"]
    assert (t.first_ds(), t.last_ds()) == ("1997-01-01", "1997-01-05")
    assert t.exists("1997-01-03") and not t.exists("1997-01-02")


def test_missing_days_are_all_named(lake):
    t = lake.table("raw_events", SCHEMA)
    for ds in ("1997-01-01", "1997-01-02", "1997-01-04", "1997-01-08"):
        t.write_partition(ds, events(2), producer=PRODUCER)
    for call in (t.files, t.read, t.dataset, t.iter_batches):
        with pytest.raises(MissingPartitionError) as err:
            call("1997-01-01", "1997-01-08")
        msg = str(err.value)
        assert "'raw_events'" in msg and "1997-01-03" in msg and "1997-01-05..1997-01-07" in msg
        assert err.value.missing == ["1997-01-03", "1997-01-05", "1997-01-06", "1997-01-07"]
    assert len(t.files("1997-01-01", "1997-01-02")) == 2
    assert t.read("1997-01-01", "1997-01-02")["event_id"].tolist() == [0, 1, 0, 1]
    with pytest.raises(MissingPartitionError, match="1997-01-09"):
        t.manifest("1997-01-09")
    err2 = pickle.loads(pickle.dumps(err.value))
    assert str(err2) == str(err.value)


def test_partition_without_manifest_is_invisible(lake):
    t = lake.table("raw_events", SCHEMA)
    t.write_partition("1997-01-01", events(3), producer=PRODUCER)
    pdir = t.partition_path("1997-01-01")
    hidden = t.partition_path("1997-01-02")
    os.makedirs(hidden)
    for name in os.listdir(pdir):
        if name != MANIFEST:
            os.link(os.path.join(pdir, name), os.path.join(hidden, name))
    assert t.partitions() == ["1997-01-01"] and not t.exists("1997-01-02")
    with pytest.raises(MissingPartitionError, match="1997-01-02"):
        t.read("1997-01-02")


def test_truncated_file_is_corrupt(lake):
    t = lake.table("raw_events", SCHEMA)
    t.write_partition("1997-01-01", events(30), producer=PRODUCER, rows_per_file=10)
    victim = t.files("1997-01-01")[1]
    with open(victim, "r+b") as fh:
        fh.truncate(os.path.getsize(victim) - 20)
    for call in (t.files, t.read):
        with pytest.raises(CorruptPartitionError) as err:
            call("1997-01-01")
        assert victim in str(err.value) and "size" in str(err.value)
        assert (err.value.table, err.value.ds, err.value.file) == ("raw_events", "1997-01-01", victim)


def test_flipped_bytes_same_size_is_corrupt(lake):
    t = lake.table("raw_events", SCHEMA)
    t.write_partition("1997-01-01", events(30), producer=PRODUCER, rows_per_file=10)
    victim = t.files("1997-01-01")[2]
    size = os.path.getsize(victim)
    with open(victim, "r+b") as fh:
        fh.seek(size // 2)
        byte = fh.read(1)
        fh.seek(size // 2)
        fh.write(bytes([byte[0] ^ 0xFF]))
    assert os.path.getsize(victim) == size
    with pytest.raises(CorruptPartitionError) as err:
        t.read("1997-01-01")
    assert victim in str(err.value) and "sha256" in str(err.value)


def test_footer_row_count_unreadable_footer_and_deleted_file_are_checked(tmp_path):
    lake = Lake(str(tmp_path / "lake"), verify_checksums=False)
    t = lake.table("raw_events", SCHEMA)
    m = t.write_partition("1997-01-01", events(20), producer=PRODUCER, rows_per_file=10)
    first, second = t.files("1997-01-01")
    # a manifest claiming one row more than the Parquet footer holds
    tampered = Manifest.from_json(m.to_json())
    tampered.files[0]["rows"] += 1
    tampered.rows += 1
    manifest_path = os.path.join(t.partition_path("1997-01-01"), MANIFEST)
    Path(manifest_path).write_text(tampered.to_json())
    with pytest.raises(CorruptPartitionError, match="Parquet footer has 10 rows, manifest says 11"):
        t.files("1997-01-01")
    Path(manifest_path).write_text(m.to_json())
    assert t.files("1997-01-01") == [first, second]
    # same size, no checksum verification: the footer check still notices garbage
    good = Path(first).read_bytes()
    Path(first).write_bytes(b"\0" * len(good))
    with pytest.raises(CorruptPartitionError, match=r"-00000\.parquet: unreadable Parquet footer"):
        t.read("1997-01-01")
    Path(first).write_bytes(good)
    os.remove(second)
    with pytest.raises(CorruptPartitionError, match=r"-00001\.parquet: file is missing"):
        t.files("1997-01-01")


def testrow_hash_sums_are_independent_for_numeric_rows():
    # hash_key alone only changes string hashes; the two sums must differ for numbers too
    from jobs.lake import row_hash_sums

    a, b = row_hash_sums(pa.table({"x": pa.array([1, 2, 3], pa.int64())}))
    assert a != b


# ---- crash safety ------------------------------------------------------------------------------------
CRASH_WRITER = r"""
import sys, time
import pandas as pd
from jobs.lake import Lake

root, ds = sys.argv[1], sys.argv[2]

def slow_chunks():
    for i in range(100_000):
        yield pd.DataFrame({"k": range(100 * i, 100 * i + 100), "v": [float(i)] * 100})
        time.sleep(0.02)

Lake(root).table("big").write_partition(ds, slow_chunks(), producer={"job": "crash"},
                                        rows_per_file=200)
print("finished", flush=True)
"""


def kill_mid_write(root, ds, pdir):
    """Start a slow writer, SIGKILL it once it has finished at least one part file."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASH_WRITER, root, ds], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    before = set(os.listdir(pdir)) if os.path.isdir(pdir) else set()
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            new = [
                n
                for n in (os.listdir(pdir) if os.path.isdir(pdir) else [])
                if n.endswith(".parquet") and n not in before
            ]
            if len(new) >= 2:  # the first one is complete, the second is being written
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        else:
            pytest.fail("writer never produced part files")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return sorted(set(os.listdir(pdir)) - before)


def test_killed_first_write_is_invisible_and_cleaned_later(lake):
    t = lake.table("big")
    pdir = t.partition_path("1997-01-01")
    strays = kill_mid_write(lake.root, "1997-01-01", pdir)
    assert len(strays) >= 2 and MANIFEST not in os.listdir(pdir)
    assert t.partitions() == [] and not t.exists("1997-01-01")
    with pytest.raises(MissingPartitionError, match="1997-01-01"):
        t.files("1997-01-01")
    m = t.write_partition("1997-01-01", pd.DataFrame({"k": [1, 2], "v": [0.5, 1.5]}), producer=PRODUCER)
    assert disk_names(t, "1997-01-01") == sorted([MANIFEST, m.files[0]["name"]])
    assert t.read("1997-01-01")["k"].tolist() == [1, 2]


def test_killed_overwrite_keeps_published_version(lake):
    t = lake.table("big")
    pdir = t.partition_path("1997-01-01")
    v1 = pd.DataFrame({"k": range(50), "v": np.linspace(0, 1, 50)})
    old = t.write_partition("1997-01-01", v1, producer=PRODUCER)
    strays = kill_mid_write(lake.root, "1997-01-01", pdir)
    assert len(strays) >= 2 and not set(strays) & {f["name"] for f in old.files}
    assert t.manifest("1997-01-01").content_fingerprint == old.content_fingerprint
    assert t.files("1997-01-01") == [os.path.join(pdir, old.files[0]["name"])]
    pd.testing.assert_frame_equal(t.read("1997-01-01"), v1)
    # the next successful write removes both the old version and the killed write's files
    new = t.write_partition("1997-01-01", v1.iloc[:7], producer=PRODUCER, rows_per_file=5)
    assert disk_names(t, "1997-01-01") == sorted([MANIFEST] + [f["name"] for f in new.files])
    assert t.read("1997-01-01")["k"].tolist() == list(range(7))


# ---- re-writing a validated day: stage, then promote or reject ---------------------------------------
def validated_day(lake, ds="1997-01-01", name="raw_events"):
    t = lake.table(name, SCHEMA)
    good = t.write_partition(ds, events(5), producer=PRODUCER, rows_per_file=3)
    t.mark_validated(ds, good)
    return t, good


def assert_readers_see(t, ds, manifest, frame):
    """Every reader of the table gets exactly `manifest`'s version."""
    pdir = t.partition_path(ds)
    assert t.manifest(ds) == manifest and t.exists(ds) and ds in t.partitions() and t.last_ds() == ds
    assert t.files(ds) == [os.path.join(pdir, f["name"]) for f in manifest.files]
    assert t.dataset(ds).to_table().num_rows == manifest.rows
    stored = pa.Table.from_pandas(frame, schema=SCHEMA, preserve_index=False).replace_schema_metadata().to_pandas()
    pd.testing.assert_frame_equal(t.read(ds), stored)
    pd.testing.assert_frame_equal(pd.concat(t.iter_batches(ds, batch_size=2), ignore_index=True), stored)


def test_first_write_and_a_rewrite_of_an_unvalidated_day_are_published_at_once(lake):
    t = lake.table("raw_events", SCHEMA)
    first = t.write_partition("1997-01-01", events(3), producer=PRODUCER)
    assert t.pending("1997-01-01") is None and not t.validated("1997-01-01")
    assert_readers_see(t, "1997-01-01", first, events(3))
    second = t.write_partition("1997-01-01", events(2, start=9), producer=PRODUCER)
    assert t.pending("1997-01-01") is None
    assert_readers_see(t, "1997-01-01", second, events(2, start=9))
    assert disk_names(t, "1997-01-01") == sorted([MANIFEST, second.files[0]["name"]])


def test_rewrite_of_a_validated_day_is_staged_and_readers_keep_the_good_version(lake):
    t, good = validated_day(lake)
    assert t.validated("1997-01-01")
    cand = t.write_partition("1997-01-01", events(4, start=100), producer={"job": "rerun"})
    assert cand.rows == 4 and cand.content_fingerprint != good.content_fingerprint
    assert_readers_see(t, "1997-01-01", good, events(5))
    staged = t.pending("1997-01-01")
    assert (staged.ds, staged.write_id, staged.manifest, staged.current) == ("1997-01-01", write_id(cand), cand, good)
    assert staged.verify() == staged.files
    assert pd.concat(staged.iter_batches(), ignore_index=True)["event_id"].tolist() == [100, 101, 102, 103]
    marker = f"_validated-{write_id(good)}.json"
    assert disk_names(t, "1997-01-01") == sorted(
        [MANIFEST, CANDIDATE, marker, *(f["name"] for f in good.files), *(f["name"] for f in cand.files)]
    )
    # a raw `lake.table(name)` without the schema reads the same published version
    assert lake.table("raw_events").manifest("1997-01-01") == good


def test_promote_swaps_the_candidate_in_and_removes_the_replaced_version(lake):
    t, good = validated_day(lake)
    cand = t.write_partition("1997-01-01", events(4, start=100), producer=PRODUCER)
    assert t.promote("1997-01-01", write_id(cand)) == cand
    assert_readers_see(t, "1997-01-01", cand, events(4, start=100))
    assert t.pending("1997-01-01") is None and t.validated("1997-01-01")
    assert disk_names(t, "1997-01-01") == sorted([MANIFEST, f"_validated-{write_id(cand)}.json", cand.files[0]["name"]])
    # promoted means validated: the next re-write is staged again
    t.write_partition("1997-01-01", events(1, start=7), producer=PRODUCER)
    assert t.manifest("1997-01-01") == cand and t.pending("1997-01-01") is not None


def test_reject_quarantines_the_candidate_and_never_touches_the_good_version(lake):
    t, good = validated_day(lake)
    before = {n: Path(t.partition_path("1997-01-01"), n).read_bytes() for n in disk_names(t, "1997-01-01")}
    cand = t.write_partition("1997-01-01", events(4, start=100), producer={"job": "bad"})
    q = t.reject("1997-01-01", write_id(cand), "amounts are negative", attachments={"_validation.json": {"ok": 0}})
    assert q == t.quarantine_path("1997-01-01", write_id(cand)) and t.quarantined("1997-01-01") == [q]
    assert sorted(os.listdir(q)) == sorted(
        [MANIFEST, "_reason.json", "_validation.json", *(f["name"] for f in cand.files)]
    )
    assert Manifest.from_json(Path(q, MANIFEST).read_text()) == cand
    reason = json.loads(Path(q, "_reason.json").read_text())
    assert (reason["source"], reason["reason"], reason["write_id"]) == (
        "candidate",
        "amounts are negative",
        write_id(cand),
    )
    assert pd.read_parquet(os.path.join(q, cand.files[0]["name"]))["event_id"].tolist() == [100, 101, 102, 103]
    # byte for byte what was there before the candidate, still validated, still what readers get
    after = {n: Path(t.partition_path("1997-01-01"), n).read_bytes() for n in disk_names(t, "1997-01-01")}
    assert after == before and t.validated("1997-01-01") and t.pending("1997-01-01") is None
    assert_readers_see(t, "1997-01-01", good, events(5))


def test_a_newer_write_replaces_a_pending_candidate_and_the_old_one_cannot_be_promoted(lake):
    t, good = validated_day(lake)
    first = t.write_partition("1997-01-01", events(2, start=100), producer=PRODUCER)
    second = t.write_partition("1997-01-01", events(3, start=200), producer=PRODUCER)
    assert t.pending("1997-01-01").manifest == second
    assert not {f["name"] for f in first.files} & set(disk_names(t, "1997-01-01"))
    for act in (lambda: t.promote("1997-01-01", write_id(first)), lambda: t.reject("1997-01-01", write_id(first), "x")):
        with pytest.raises(LakeError, match=f"write {write_id(first)} is not the pending candidate"):
            act()
    assert t.manifest("1997-01-01") == good and t.quarantined("1997-01-01") == []
    t.promote("1997-01-01", write_id(second))
    with pytest.raises(LakeError, match=r"\(none is\)"):
        t.promote("1997-01-01", write_id(second))
    assert t.read("1997-01-01")["event_id"].tolist() == [200, 201, 202]


def test_mark_validated_refuses_a_version_that_was_replaced(lake):
    t = lake.table("raw_events", SCHEMA)
    old = t.write_partition("1997-01-01", events(2), producer=PRODUCER)
    t.write_partition("1997-01-01", events(3), producer=PRODUCER)
    with pytest.raises(LakeError, match="changed while it was validated"):
        t.mark_validated("1997-01-01", old)
    assert not t.validated("1997-01-01")
    with pytest.raises(MissingPartitionError):
        t.mark_validated("1997-01-02", old)


def test_a_marker_for_other_content_does_not_count(lake):
    t, good = validated_day(lake)
    marker = Path(t.partition_path("1997-01-01"), f"_validated-{write_id(good)}.json")
    marker.write_text(json.dumps({"content_fingerprint": "0" * 64}))
    assert not t.validated("1997-01-01")
    marker.write_text("{not json")
    assert not t.validated("1997-01-01")
    new = t.write_partition("1997-01-01", events(1), producer=PRODUCER)  # not protected: published at once
    assert t.manifest("1997-01-01") == new and t.pending("1997-01-01") is None


def test_a_passing_gate_publishes_a_validated_version(lake):
    t = lake.table("raw_events", SCHEMA)
    m = t.write_partition("1997-01-01", events(3), producer=PRODUCER, gate=lambda staged: None)
    assert t.validated("1997-01-01")
    cand = t.write_partition("1997-01-01", events(2, start=50), producer=PRODUCER)
    assert t.manifest("1997-01-01") == m and t.pending("1997-01-01").manifest == cand
    # a gated write publishes directly and drops the pending candidate
    gated = t.write_partition("1997-01-01", events(4, start=70), producer=PRODUCER, gate=lambda staged: None)
    assert t.manifest("1997-01-01") == gated and t.pending("1997-01-01") is None
    assert disk_names(t, "1997-01-01") == sorted(
        [MANIFEST, f"_validated-{write_id(gated)}.json", gated.files[0]["name"]]
    )


def test_quarantining_the_published_version_takes_its_marker_and_leaves_the_candidate(lake):
    t, good = validated_day(lake)
    cand = t.write_partition("1997-01-01", events(2, start=100), producer=PRODUCER)
    q = t.quarantine("1997-01-01", "found bad later")
    assert f"_validated-{write_id(good)}.json" in os.listdir(q)
    assert not t.exists("1997-01-01") and t.pending("1997-01-01").current is None
    # with no validated version left, the next plain write publishes and drops the candidate
    new = t.write_partition("1997-01-01", events(1, start=300), producer=PRODUCER)
    assert t.manifest("1997-01-01") == new and t.pending("1997-01-01") is None
    assert disk_names(t, "1997-01-01") == sorted([MANIFEST, new.files[0]["name"]])
    assert not {f["name"] for f in cand.files} & set(disk_names(t, "1997-01-01"))


def test_a_corrupt_candidate_is_named_and_the_published_version_stays_readable(lake):
    t, good = validated_day(lake)
    cand = t.write_partition("1997-01-01", events(4, start=100), producer=PRODUCER)
    path = os.path.join(t.partition_path("1997-01-01"), cand.files[0]["name"])
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) - 5)
    with pytest.raises(CorruptPartitionError, match="size"):
        t.pending("1997-01-01").verify()
    Path(t.partition_path("1997-01-01"), CANDIDATE).write_text("{not json")
    with pytest.raises(CorruptPartitionError, match=CANDIDATE):
        t.pending("1997-01-01")
    assert_readers_see(t, "1997-01-01", good, events(5))


def test_failed_staged_write_leaves_the_pending_candidate_and_the_good_version(lake):
    t, good = validated_day(lake)
    cand = t.write_partition("1997-01-01", events(2, start=100), producer=PRODUCER)

    def chunks():
        yield events(2, start=500)
        raise RuntimeError("source went away")

    with pytest.raises(RuntimeError, match="source went away"):
        t.write_partition("1997-01-01", chunks(), producer=PRODUCER)
    assert t.manifest("1997-01-01") == good and t.pending("1997-01-01").manifest == cand


def test_staging_and_promotion_on_a_non_local_filesystem():
    lake = Lake(f"memory://lake-{uuid.uuid4().hex}")
    t, good = validated_day(lake)
    cand = t.write_partition("1997-01-01", events(3, start=100), producer=PRODUCER)
    assert t.manifest("1997-01-01") == good and t.read("1997-01-01")["event_id"].tolist() == list(range(5))
    t.promote("1997-01-01", write_id(cand))
    assert t.manifest("1997-01-01") == cand and t.read("1997-01-01")["event_id"].tolist() == [100, 101, 102]
    names = sorted(p.rsplit("/", 1)[-1] for p in lake.fs.ls(t.partition_path("1997-01-01"), detail=False))
    assert names == sorted([MANIFEST, f"_validated-{write_id(cand)}.json", cand.files[0]["name"]])
    bad = t.write_partition("1997-01-01", events(1, start=900), producer=PRODUCER)
    q = t.reject("1997-01-01", write_id(bad), "no")
    assert t.manifest("1997-01-01") == cand and t.quarantined("1997-01-01") == [q]
