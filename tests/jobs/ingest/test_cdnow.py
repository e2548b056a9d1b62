"""CDNOW ingest: parsing, the mapping to the cdnow_purchases raw columns, price bands, partitions by ingest day."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import re
import zlib

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from features.projects.cdnow.purchases import CDNOW_PURCHASES
from jobs.ingest.cdnow import (
    CDNOW_PATH,
    event_ids,
    ingest_cdnow,
    iter_ingest_days,
    price_band,
    read_cdnow,
)
from jobs.schemas import raw_schema, to_raw

RAW_EVENTS = raw_schema(CDNOW_PURCHASES)
RAW_EVENTS_TABLE = CDNOW_PURCHASES.table


def to_raw_events(frame):
    return to_raw(CDNOW_PURCHASES, frame)


US = pd.Timedelta(microseconds=1)


@pytest.fixture(scope="module")
def cdnow() -> pd.DataFrame:
    return read_cdnow()


@pytest.fixture(scope="module")
def raw_lines() -> list[str]:
    with gzip.open(CDNOW_PATH, "rt") as f:
        return f.read().splitlines()


def utc(day: str) -> pd.Timestamp:
    return pd.Timestamp(day, tz="UTC")


def test_row_count_and_event_ids_are_derived_from_the_customer_day(cdnow, raw_lines):
    assert len(cdnow) == 69_659
    assert len(raw_lines) == 69_660  # header + data lines
    assert cdnow["event_id"].is_unique and (cdnow["event_id"] >= 0).all()
    assert (cdnow["event_id"] < 2**53).all()  # exact as float64 (a batch with a null, JSON)
    assert cdnow["event_id"].tolist() == event_ids(cdnow["customer_id"], cdnow["event_ts"]).tolist()
    # The low 8 bits count the orders of one customer-day in file order, the rest is the customer-day.
    occurrence = cdnow["event_id"] & 0xFF
    assert occurrence.tolist() == cdnow.groupby(["customer_id", "event_ts"]).cumcount().tolist()
    customer_day = pd.Series(cdnow["event_id"].to_numpy() >> 8)
    assert customer_day.groupby([cdnow["customer_id"], cdnow["event_ts"]]).nunique().max() == 1
    assert customer_day.nunique() == cdnow.groupby(["customer_id", "event_ts"]).ngroups


def _variant(tmp_path, name: str, lines: list[str]):
    path = tmp_path / name
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    return read_cdnow(path)


def _ids_by_occurrence(frame: pd.DataFrame) -> pd.Series:
    key = [frame["customer_id"], frame["event_ts"], frame.groupby(["customer_id", "event_ts"]).cumcount()]
    return frame.set_index(key)["event_id"]


def test_an_export_without_the_header_with_a_deleted_line_or_of_one_day_keeps_every_id(tmp_path, cdnow, raw_lines):
    """Issue 15 item 1: with line numbers as ids, each of these exports renumbered every later event."""
    shipped = _ids_by_occurrence(cdnow)
    no_header = _variant(tmp_path, "no_header.txt.gz", raw_lines[1:])
    assert no_header["event_id"].tolist() == cdnow["event_id"].tolist()
    # Data line 10 is customer 4's only order of 1997-01-01: every other event keeps its id.
    assert raw_lines[10] == " 00004 19970101  2   29.33"
    deleted = _variant(tmp_path, "deleted.txt.gz", raw_lines[:10] + raw_lines[11:])
    assert len(deleted) == len(cdnow) - 1
    assert _ids_by_occurrence(deleted).to_dict() == shipped.drop((4, utc("1997-01-01"), 0)).to_dict()
    one_day = [line for line in raw_lines[1:] if line.split()[1] == "19970326"]
    day = _variant(tmp_path, "one_day.txt.gz", raw_lines[:1] + one_day)
    assert len(day) == len(one_day) > 100
    assert set(day["event_id"]) == set(cdnow.loc[cdnow["event_ts"] == utc("1997-03-26"), "event_id"])
    assert _ids_by_occurrence(day).to_dict() == {k: v for k, v in shipped.items() if k[1] == utc("1997-03-26")}


def test_first_and_last_rows_match_the_raw_file(cdnow, raw_lines):
    assert raw_lines[1:6] == [
        " 00001 19970101  1   11.77",
        " 00002 19970112  1   12.00",
        " 00002 19970112  5   77.00",
        " 00003 19970102  2   20.76",
        " 00003 19970330  2   20.76",
    ]
    expected = [  # occurrence: the order's number within its customer-day (the id's low 8 bits)
        (0, 1, "1997-01-01", 1, 11.77, "budget"),
        (0, 2, "1997-01-12", 1, 12.00, "standard"),
        (1, 2, "1997-01-12", 5, 77.00, "standard"),  # 15.40 per CD
        (0, 3, "1997-01-02", 2, 20.76, "budget"),  # 10.38 per CD
        (0, 3, "1997-03-30", 2, 20.76, "budget"),
    ]
    for row, (occurrence, cid, day, n, amount, band) in zip(cdnow.head(5).itertuples(index=False), expected):
        assert row.event_id & 0xFF == occurrence and row.customer_id == cid
        assert row.event_ts == utc(day)
        assert row.ingested_at == utc(day) + pd.Timedelta(days=1) - US
        assert row.n_items == n and row.amount == amount and row.category == band
    assert raw_lines[-1] == " 23570 19970326  2   42.96"
    last = cdnow.iloc[-1]
    assert (last.event_id & 0xFF, last.customer_id, last.event_ts, last.n_items, last.amount) == (
        0,
        23_570,
        utc("1997-03-26"),
        2,
        42.96,
    )


def test_schema_is_raw_events_with_utc_microseconds(cdnow):
    assert list(cdnow.columns) == RAW_EVENTS.names
    for col in ("event_ts", "ingested_at"):
        assert cdnow[col].dtype == pd.DatetimeTZDtype("us", "UTC")
    table = to_raw_events(cdnow)
    assert table.schema.equals(RAW_EVENTS, check_metadata=True)
    assert table.schema.field("event_ts").type == pa.timestamp("us", tz="UTC")
    assert not table.schema.field("event_id").nullable


def test_event_ts_is_midnight_and_ingested_at_is_the_end_of_that_day(cdnow):
    assert (cdnow["event_ts"] == cdnow["event_ts"].dt.floor("D")).all()
    assert (cdnow["ingested_at"] - cdnow["event_ts"] == pd.Timedelta(days=1) - US).all()
    # A known_at snapshot at D+1 00:00 sees day D's purchases; one at D 23:59:59.999999 does not.
    assert (cdnow["ingested_at"] < cdnow["event_ts"] + pd.Timedelta(days=1)).all()
    assert cdnow["event_ts"].min() == utc("1997-01-01")
    assert cdnow["event_ts"].max() == utc("1998-06-30")


@pytest.mark.parametrize(
    ("amount", "n_items", "band"),
    [
        (0.0, 1, "free"),
        (0.0, 3, "free"),
        (0.01, 1, "budget"),
        (11.99, 1, "budget"),
        (12.00, 1, "standard"),
        (23.99, 2, "budget"),
        (24.00, 2, "standard"),  # exactly $12.00 per CD, despite float cents
        (15.99, 1, "standard"),
        (16.00, 1, "premium"),
        (47.99, 3, "standard"),
        (48.00, 3, "premium"),
        (1286.01, 99, "standard"),  # the largest order: $12.99 per CD
        (5.0, 0, None),
        (np.nan, 1, None),
    ],
)
def test_price_band_rules(amount, n_items, band):
    assert price_band([amount], [n_items]).tolist() == [band]


def test_price_band_on_cdnow(cdnow):
    counts = cdnow["category"].value_counts(dropna=False).to_dict()
    assert counts == {"standard": 38_528, "budget": 16_042, "premium": 15_009, "free": 80}
    assert (cdnow.loc[cdnow["category"] == "free", "amount"] == 0).all()
    per_cd = cdnow["amount"] / cdnow["n_items"]
    assert per_cd[cdnow["category"] == "premium"].min() >= 16.0
    assert per_cd[cdnow["category"] == "budget"].max() < 12.0


def test_oddities_are_kept_not_dropped(cdnow, raw_lines):
    # 255 lines repeat an earlier line exactly; 80 orders are $0: all kept, each with its own id.
    content = ["customer_id", "event_ts", "n_items", "amount"]
    assert int(cdnow.duplicated(content).sum()) == 255
    assert len(raw_lines[1:]) - len(set(raw_lines[1:])) == 255
    assert int((cdnow["amount"] == 0).sum()) == 80
    assert cdnow["event_id"].is_unique
    assert int((cdnow["n_items"] == 0).sum()) == 0
    assert cdnow["category"].notna().all()


def _write_source(path, lines: list[str]) -> None:
    with gzip.open(path, "wt") as f:
        f.write(" customer_id  date number_of_cds  dollar_value\n")
        f.write("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        pytest.param(
            " 00002 19970231  1   12.00",
            "bad date on data line(s) [2]",
            marks=pytest.mark.bad_input("cdnow: a date that does not exist (February 31)"),
        ),
        pytest.param(
            " 00002 19970102  -1   12.00",
            "bad number_of_cds on data line(s) [2]",
            marks=pytest.mark.bad_input("cdnow: a negative item count"),
        ),
        pytest.param(
            " 00002 19970102  1   abc",
            "bad dollar_value on data line(s) [2]",
            marks=pytest.mark.bad_input("landing: a value that is not a number"),
        ),
        pytest.param(
            " 00002 19970102  1",
            "malformed data line(s) [2]",
            marks=pytest.mark.bad_input("file: a record with the wrong field count"),
        ),
    ],
)
def test_malformed_lines_are_named(tmp_path, bad_line, message):
    src = tmp_path / "bad.txt.gz"
    _write_source(src, [" 00001 19970101  1   11.77", bad_line, " 00003 19970103  2   20.00"])
    with pytest.raises(ValueError, match=re.escape(message)):
        read_cdnow(src)


# ---- a damaged file: the error names the file and the line -----------------------------------------
HEADER = b" customer_id  date number_of_cds  dollar_value\n"
LINES = b"".join(
    b" %05d 199701%02d  %d   %d.%02d\n" % (i, i % 28 + 1, i % 5 + 1, i * 7 % 97, i % 100) for i in range(1, 2001)
)


@pytest.mark.bad_input("file: a truncated gzip file")
def test_a_truncated_gzip_names_the_file_and_the_last_whole_line(tmp_path):
    whole = gzip.compress(HEADER + LINES)
    cut = whole[: len(whole) // 2]
    recovered = zlib.decompressobj(31).decompress(cut)  # all a reader can get: its whole lines are known
    lines, size = recovered.count(b"\n"), recovered.rfind(b"\n") + 1
    src = tmp_path / "cut.txt.gz"
    src.write_bytes(cut)
    with pytest.raises(ValueError) as info:
        read_cdnow(src)
    assert str(info.value) == (
        f"{src}: truncated gzip file: its {len(cut)} bytes end without the end-of-stream marker, after line {lines} "
        f"({size} bytes decompressed); what followed (line {lines + 1} and any later ones) cannot be known, "
        "a compressed stream keeps no index of its lines"
    )
    assert 100 < lines < 2000


@pytest.mark.bad_input("file: a byte that is not UTF-8")
def test_a_byte_that_is_not_utf8_names_the_file_line_and_column(tmp_path):
    src = tmp_path / "latin1.txt.gz"
    src.write_bytes(gzip.compress(HEADER + LINES.replace(b" 00004 ", b" 0\xe904 ")))
    with pytest.raises(ValueError) as info:
        read_cdnow(src)
    assert str(info.value) == f"{src}: line 5, byte 3: b'\\xe9' is not utf-8 (invalid continuation byte)"


@pytest.mark.parametrize("extra,found", [(" 9", 5), ("", 3)])
@pytest.mark.bad_input("file: a record with the wrong field count")
def test_a_wrong_field_count_names_the_file_and_the_line(tmp_path, extra, found):
    line = b" 00007 19970108  3   49.07"
    damaged = line + extra.encode() if extra else b" 00007 19970108  3"
    src = tmp_path / "fields.txt.gz"
    src.write_bytes(gzip.compress(HEADER + LINES.replace(line, damaged)))
    with pytest.raises(ValueError) as info:
        read_cdnow(src)
    assert str(info.value) == (
        f"{src}: malformed data line(s) [7] (file line(s) [8]; expected 4 fields, file line 8 has {found})"
    )


def test_iter_ingest_days_yields_every_day_including_empty_ones(cdnow):
    days = list(iter_ingest_days(cdnow, "1998-06-29", "1998-07-02"))
    assert [ds for ds, _ in days] == ["1998-06-29", "1998-06-30", "1998-07-01", "1998-07-02"]
    sizes = [len(f) for _, f in days]
    on_day = cdnow["event_ts"].dt.date
    n_29, n_30 = (int((on_day == dt.date(1998, 6, d)).sum()) for d in (29, 30))
    assert sizes == [n_29, n_30, 0, 0]
    assert sizes[0] > 0
    for ds, frame in days:
        assert (frame["ingested_at"].dt.date.astype(str) == ds).all()
        assert frame["event_id"].is_monotonic_increasing
        assert list(frame.columns) == RAW_EVENTS.names


def test_every_day_of_the_span_has_events(cdnow):
    days = [ds for ds, f in iter_ingest_days(cdnow, "1997-01-01", "1998-06-30") if len(f)]
    assert len(days) == 546


def test_reversed_range_is_rejected(cdnow):
    with pytest.raises(ValueError, match="before"):
        list(iter_ingest_days(cdnow, "1997-01-02", "1997-01-01"))


# ---- writing to the lake ------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_ingest(tmp_path_factory):
    from jobs.lake import Lake

    lake = Lake(str(tmp_path_factory.mktemp("lake")))
    return lake, ingest_cdnow(lake)


def test_default_ingest_covers_the_full_span_one_partition_per_day(full_ingest, cdnow):
    lake, manifests = full_ingest
    table = lake.table(RAW_EVENTS_TABLE)
    expected_days = [d.date().isoformat() for d in pd.date_range("1997-01-01", "1998-06-30", freq="D")]
    assert [m.ds for m in manifests] == expected_days
    assert table.partitions() == expected_days
    assert sum(m.rows for m in manifests) == 69_659
    back = table.read("1997-01-01", "1998-06-30").sort_values("event_id", ignore_index=True)
    pd.testing.assert_frame_equal(back, cdnow.sort_values("event_id", ignore_index=True), check_dtype=True)


def test_manifest_names_the_job_and_the_source_checksum(full_ingest):
    lake, manifests = full_ingest
    sha = hashlib.sha256(CDNOW_PATH.read_bytes()).hexdigest()
    m = lake.table(RAW_EVENTS_TABLE).manifest("1997-03-26")
    assert m.producer["job"] == "ingest_cdnow" and m.producer["source"] == "cdnow_purchases"
    assert m.table == "raw_events/cdnow_purchases"
    assert m.inputs == {"CDNOW_master.txt.gz": sha}
    same_day = next(x for x in manifests if x.ds == "1997-03-26")
    assert m.content_fingerprint == same_day.content_fingerprint


def test_partition_holds_exactly_the_events_ingested_that_day(full_ingest, cdnow):
    lake, _ = full_ingest
    part = lake.table(RAW_EVENTS_TABLE).read("1998-05-18")
    expected = cdnow[cdnow["event_ts"].dt.date == dt.date(1998, 5, 18)]
    assert sorted(part["event_id"]) == sorted(expected["event_id"])
    assert (part["ingested_at"] == utc("1998-05-18") + pd.Timedelta(days=1) - US).all()


def test_rerun_gives_identical_fingerprints_and_replaces_partitions(full_ingest, tmp_path):
    from jobs.lake import Lake

    lake, manifests = full_ingest
    again = ingest_cdnow(lake, "1997-10-01", "1997-10-05")
    by_ds = {m.ds: m for m in manifests}
    assert [m.content_fingerprint for m in again] == [by_ds[m.ds].content_fingerprint for m in again]
    assert len({m.content_fingerprint for m in again}) == 5  # different days, different content
    fresh = ingest_cdnow(Lake(str(tmp_path / "other")), dt.date(1997, 10, 1), "1997-10-05")
    assert [m.content_fingerprint for m in fresh] == [m.content_fingerprint for m in again]
    assert lake.table(RAW_EVENTS_TABLE).read("1997-10-01", "1997-10-05")["event_id"].is_unique


def test_range_beyond_the_data_writes_empty_partitions(tmp_path):
    from jobs.lake import Lake

    lake = Lake(str(tmp_path / "lake"))
    manifests = ingest_cdnow(lake, "1998-06-29", "1998-07-02")
    assert [(m.ds, m.rows > 0) for m in manifests] == [
        ("1998-06-29", True),
        ("1998-06-30", True),
        ("1998-07-01", False),
        ("1998-07-02", False),
    ]
    assert manifests[2].rows == 0
    table = lake.table(RAW_EVENTS_TABLE)
    assert table.partitions() == ["1998-06-29", "1998-06-30", "1998-07-01", "1998-07-02"]
    empty = table.read("1998-07-01")
    assert len(empty) == 0 and list(empty.columns) == RAW_EVENTS.names


def test_default_range_of_a_source_with_gaps_has_empty_days(tmp_path):
    from jobs.lake import Lake

    src = tmp_path / "small.txt.gz"
    _write_source(
        src,
        [
            " 00007 19970103  1   11.00",
            " 00007 19970101  2   40.00",
            " 00008 19970105  3   30.00",
        ],
    )
    lake = Lake(str(tmp_path / "lake"))
    manifests = ingest_cdnow(lake, source=src)
    assert [(m.ds, m.rows) for m in manifests] == [
        ("1997-01-01", 1),
        ("1997-01-02", 0),
        ("1997-01-03", 1),
        ("1997-01-04", 0),
        ("1997-01-05", 1),
    ]
    assert manifests[0].inputs == {"small.txt.gz": hashlib.sha256(src.read_bytes()).hexdigest()}
    first = lake.table(RAW_EVENTS_TABLE).read("1997-01-01")
    assert first[["event_id", "customer_id", "n_items", "amount", "category"]].values.tolist() == [
        [int(event_ids([7], pd.Series([utc("1997-01-01")]))[0]), 7, 2, 40.0, "premium"]
    ]
