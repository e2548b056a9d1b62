"""Tampering the manifest agrees with (issue 15, item 4), at the lake: a part file rewritten and its
manifest's size and sha256 updated is caught by the content fingerprint on every reader path; a careful
tamperer who recomputes the fingerprint too is caught by the manifest's signature under the lake key."""

import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from test_validate_support import tamper

from jobs.lake import (
    KEY_ENV,
    KEY_FILE_ENV,
    MANIFEST,
    CorruptPartitionError,
    Lake,
    LakeError,
)

PRODUCER = {"job": "test"}
SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.int64(), nullable=False),
        pa.field("event_ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("amount", pa.float64()),
        pa.field("category", pa.string()),
    ]
)
DS = "2024-01-02"


@pytest.fixture(autouse=True)
def no_key_env(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)


def rows(n=40, start=0):
    ids = np.arange(start, start + n, dtype="int64")
    return pd.DataFrame(
        {
            "event_id": ids,
            "event_ts": pd.Timestamp("2024-01-02", tz="UTC") + pd.to_timedelta(ids, unit="s"),
            "amount": ids * 1.5,
            "category": [f"c{i % 3}" for i in ids],
        }
    )


def one_amount_changed(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[7, "amount"] = 1e6  # same row count, same schema: only the fingerprint can tell
    return df


def content_error(info, lake, table="events", ds=DS) -> str:
    msg = str(info.value)
    manifest = os.path.join(lake.table(table).partition_path(ds), MANIFEST)
    assert msg.startswith(f"table {table!r} ds={ds}: file {manifest}: content fingerprint of the rows read is "), msg
    assert "manifest says" in msg and "are not the rows the manifest was written for" in msg, msg
    assert info.value.table == table and info.value.ds == ds and info.value.file == manifest
    return msg


@pytest.mark.parametrize(
    "reader",
    [
        pytest.param(lambda t: t.read(DS), id="read"),
        pytest.param(lambda t: t.read(DS, columns=["event_id"]), id="read-columns"),
        pytest.param(lambda t: list(t.iter_batches(DS, batch_size=7)), id="iter_batches"),
        pytest.param(lambda t: t.files(DS), id="files"),  # what the Dask/Spark engines are given
        pytest.param(lambda t: t.dataset(DS), id="dataset"),  # what validation and scoring read
    ],
)
@pytest.mark.bad_input("lake: a data file edited, its manifest's size and sha256 updated")
def test_a_rewritten_file_whose_size_and_sha256_were_updated_is_refused_by_every_reader(tmp_path, reader):
    lake = Lake(str(tmp_path / "lake"))
    t = lake.table("events", SCHEMA)
    m = t.write_partition(DS, rows(), producer=PRODUCER)
    tampered, path = tamper(lake, "events", DS, one_amount_changed)
    assert tampered.files[0]["sha256"] != m.files[0]["sha256"]  # the checksum no longer tells anything
    with pytest.raises(CorruptPartitionError) as info:
        reader(lake.table("events", SCHEMA))
    msg = content_error(info, lake)
    assert os.path.basename(path) in msg and f"manifest says {m.content_fingerprint}" in msg


def test_without_content_verification_the_tamper_passes(tmp_path):
    """What ``verify_content=False`` gives up: the checksums agree, so the edited rows are read."""
    lake = Lake(str(tmp_path / "lake"), verify_content=False)
    lake.table("events", SCHEMA).write_partition(DS, rows(), producer=PRODUCER)
    tamper(lake, "events", DS, one_amount_changed)
    assert lake.table("events").read(DS)["amount"].iloc[7] == 1e6


def test_streaming_readers_raise_after_the_bad_partitions_last_batch(tmp_path):
    """The good day streams through; the tampered day's batches come, then the error, before the loop
    ends: a consumer that publishes after its loop (as every job does) publishes nothing."""
    lake = Lake(str(tmp_path / "lake"))
    t = lake.table("events", SCHEMA)
    t.write_partition("2024-01-01", rows(30), producer=PRODUCER)
    t.write_partition(DS, rows(40, start=100), producer=PRODUCER)
    tamper(lake, "events", DS, one_amount_changed)
    seen = []
    with pytest.raises(CorruptPartitionError, match="content fingerprint") as info:
        for batch in t.iter_batches("2024-01-01", DS, batch_size=16):
            seen.append(len(batch))
    assert seen == [16, 14, 16, 16, 8]  # every batch of both days, then the error
    assert info.value.ds == DS
    # a streamed write of those batches is never published
    out = lake.table("copy")
    with pytest.raises(CorruptPartitionError):
        out.write_partition(DS, t.iter_batches("2024-01-01", DS, batch_size=16), producer=PRODUCER)
    assert out.partitions() == [] and not os.listdir(out.partition_path(DS))


@pytest.mark.bad_input("lake: rows deleted or duplicated in a data file")
def test_deleted_and_duplicated_rows_are_refused(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    t = lake.table("events", SCHEMA)
    t.write_partition(DS, rows(), producer=PRODUCER)
    # the same 40 rows with one swapped for a copy of another: count and schema agree
    tamper(lake, "events", DS, lambda df: pd.concat([df.drop(index=3), df.iloc[[4]]], ignore_index=True))
    with pytest.raises(CorruptPartitionError, match="content fingerprint"):
        t.read(DS)


def test_no_false_alarm_for_reader_schemas_drift_between_days_empty_days_and_many_files(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    t = lake.table("events")
    t.write_partition("2024-01-01", rows(25), producer=PRODUCER, rows_per_file=10)  # 3 files
    t.write_partition(DS, rows(5).assign(extra=1), producer=PRODUCER)  # a drifted day
    lake.table("events", SCHEMA).write_partition("2024-01-03", SCHEMA.empty_table(), producer=PRODUCER)
    both = t.read("2024-01-01", "2024-01-03")
    assert len(both) == 30 and list(both.columns) == ["event_id", "event_ts", "amount", "category"]
    assert sum(len(b) for b in t.iter_batches("2024-01-01", "2024-01-03", batch_size=4)) == 30
    wider = pa.schema([*SCHEMA, pa.field("extra", pa.int64())])
    assert lake.table("events", wider).read(DS)["extra"].tolist() == [1] * 5
    assert list(t.read("2024-01-03").columns) == ["event_id", "event_ts", "amount", "category"]
    assert len(t.files("2024-01-01", "2024-01-03")) == 5


# ---- signing --------------------------------------------------------------------------------------
KEY = b"test-lake-key-0123456789"


def test_a_careful_tamperer_who_recomputes_the_fingerprint_passes_unsigned_and_is_caught_signed(tmp_path):
    root = str(tmp_path / "lake")
    Lake(root).table("events", SCHEMA).write_partition(DS, rows(), producer=PRODUCER)
    tamper(Lake(root), "events", DS, one_amount_changed, fingerprint=True)
    assert Lake(root).table("events").read(DS)["amount"].iloc[7] == 1e6  # undetectable without a key

    signed = Lake(str(tmp_path / "signed"), key=KEY)
    m = signed.table("events", SCHEMA).write_partition(DS, rows(), producer=PRODUCER)
    assert m.signature.startswith("hmac-sha256:") and signed.table("events").manifest(DS) == m
    tamper(signed, "events", DS, one_amount_changed, fingerprint=True)
    with pytest.raises(CorruptPartitionError) as info:
        signed.table("events").read(DS)
    manifest = os.path.join(signed.table("events").partition_path(DS), MANIFEST)
    assert str(info.value) == (
        f"table 'events' ds={DS}: file {manifest}: manifest signature does not match the lake key "
        "(the manifest was edited, or signed with another key)"
    )
    assert not signed.table("events").exists(DS) and signed.table("events").partitions() == []
    # re-signed with the wrong key: the same refusal; with the lake's key only a key holder can forge
    tamper(signed, "events", DS, lambda df: df, fingerprint=True, resign=b"another key")
    with pytest.raises(CorruptPartitionError, match="manifest signature does not match the lake key"):
        signed.table("events").manifest(DS)


@pytest.mark.bad_input("lake: an unsigned manifest in a signed lake")
def test_with_a_key_configured_an_unsigned_manifest_is_refused_and_candidates_are_signed_too(tmp_path):
    root = str(tmp_path / "lake")
    t = Lake(root).table("events", SCHEMA)
    t.write_partition(DS, rows(), producer=PRODUCER)
    with pytest.raises(CorruptPartitionError, match="manifest is not signed, and this lake requires the lake key"):
        Lake(root, key=KEY).table("events").read(DS)
    keyed = Lake(root, key=KEY).table("events", SCHEMA)
    keyed.write_partition(DS, rows(), producer=PRODUCER)  # re-signed by a write with the key
    keyed.mark_validated(DS, keyed.manifest(DS))
    keyed.write_partition(DS, rows(41), producer=PRODUCER)  # staged as a candidate
    cand = keyed.pending(DS)
    assert cand.manifest.signature and keyed.promote(DS, cand.write_id).rows == 41
    assert len(keyed.read(DS)) == 41
    assert len(Lake(root).table("events").read(DS)) == 41  # a reader without the key still reads it


def test_the_key_comes_from_the_environment_or_a_key_file(tmp_path, monkeypatch):
    root = str(tmp_path / "lake")
    monkeypatch.setenv(KEY_ENV, KEY.decode())
    assert Lake(root).key == KEY
    m = Lake(root).table("events", SCHEMA).write_partition(DS, rows(), producer=PRODUCER)
    monkeypatch.delenv(KEY_ENV)
    keyfile = tmp_path / "lake.key"
    keyfile.write_bytes(KEY + b"\n")
    monkeypatch.setenv(KEY_FILE_ENV, str(keyfile))
    assert Lake(root).table("events").manifest(DS) == m
    keyfile.write_bytes(b"other\n")
    with pytest.raises(CorruptPartitionError, match="manifest signature does not match"):
        Lake(root).table("events").manifest(DS)
    keyfile.write_bytes(b"  \n")
    with pytest.raises(LakeError, match=f"{KEY_FILE_ENV}={keyfile}: the lake key file is empty"):
        Lake(root)
    monkeypatch.setenv(KEY_FILE_ENV, str(tmp_path / "nope"))
    with pytest.raises(LakeError, match="cannot read the lake key"):
        Lake(root)


def test_a_manifest_written_before_signing_existed_still_parses(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    m = lake.table("events", SCHEMA).write_partition(DS, rows(), producer=PRODUCER)
    path = os.path.join(lake.table("events").partition_path(DS), MANIFEST)
    data = json.loads(open(path).read())
    del data["signature"]
    open(path, "w").write(json.dumps(data))
    assert lake.table("events").manifest(DS) == m and len(lake.table("events").read(DS)) == 40
