"""Landing a declared source: CSV / JSON Lines / Parquet files, column mapping, time zones, units,
derived event ids, errors naming the file, the column and the rule; the CDNOW parser."""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.source import Column, FileLander, Key, ParserLander, Source
from jobs.config import Config
from jobs.ingest.landing import LandingError, derived_event_ids, land, parser_for
from jobs.lake import LakeError
from jobs.schemas import raw_schema

END = pd.Timedelta(days=1) - pd.Timedelta(microseconds=1)


def utc(s: str) -> pd.Timestamp:
    return pd.Timestamp(s, tz="UTC")


def orders_source(root, **lander) -> Source:
    """Shop orders exported per day as CSV in New York wall-clock time, amounts in cents."""
    kw = dict(
        format="csv",
        path=str(root / "orders" / "{ds}.csv"),
        columns={"shop": "Shop", "event_ts": "Placed", "amount": "AmountCents"},
        scale={"amount": 0.01},
        time_zone="America/New_York",
    )
    kw.update(lander)
    return Source(
        name="shop_orders",
        keys=(Key("shop", "string"),),
        columns=(
            Column("amount", "double", min=0),
            Column("items", "int64", nullable=True),
            Column("channel", "string", allowed=("web", "app")),
        ),
        lander=FileLander(**kw),
        event_id="order_id",
        event_id_type="string",
    )


DAY1 = """Shop,Placed,AmountCents,items,channel
001,2024-03-09 23:30:00,1234,2,web
café,2024-03-10 01:59:59,99,,app
001,2024-03-09 23:30:00,1234,2,web
"""
DAY2 = """Shop,Placed,AmountCents,items,channel
002,2024-03-10 03:00:00,500,1,app
"""


@pytest.fixture
def cfg(tmp_path):
    return Config(lake_root=str(tmp_path / "lake"))


def write(path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_csv_with_string_keys_and_a_time_zone_lands_two_days_exactly(cfg, tmp_path):
    src = orders_source(tmp_path)
    write(tmp_path / "orders" / "2024-03-10.csv", DAY1)
    write(tmp_path / "orders" / "2024-03-11.csv", DAY2)
    manifests = land(cfg, src, "2024-03-10", "2024-03-11")
    assert [(m.table, m.ds, m.rows) for m in manifests] == [
        ("raw_events/shop_orders", "2024-03-10", 3),
        ("raw_events/shop_orders", "2024-03-11", 1),
    ]
    m = manifests[0]
    assert m.producer == {
        "job": "land",
        "source": "shop_orders",
        "format": "csv",
        "path": str(tmp_path / "orders" / "{ds}.csv"),
    }
    assert list(m.inputs) == [str(tmp_path / "orders" / "2024-03-10.csv")]
    table = cfg.lake().table(src.table)
    got = table.read("2024-03-10")
    assert pa.Schema.from_pandas(got, preserve_index=False).names == raw_schema(src).names
    # keys stay strings ("001", not 1); EST (-5h) before the 2024-03-10 02:00 DST change, EDT after
    assert got["shop"].tolist() == ["001", "café", "001"]
    assert got["event_ts"].tolist() == [utc("2024-03-10 04:30"), utc("2024-03-10 06:59:59"), utc("2024-03-10 04:30")]
    assert got["ingested_at"].tolist() == [utc("2024-03-10") + END] * 3  # the end of the landing day
    assert got["amount"].tolist() == [12.34, 0.99, 12.34]  # cents / 100, exactly
    assert got["items"].tolist()[0] == 2 and pd.isna(got["items"].tolist()[1])
    assert got["channel"].tolist() == ["web", "app", "web"]
    ids = got["order_id"].tolist()
    assert len(set(ids)) == 3 and all(len(i) == 16 for i in ids)  # two identical orders, two ids
    day2 = table.read("2024-03-11")
    assert day2["event_ts"].tolist() == [utc("2024-03-10 07:00")]  # EDT: -4h
    assert day2["ingested_at"].tolist() == [utc("2024-03-11") + END]


def test_derived_event_ids_are_stable_under_a_re_export(cfg, tmp_path):
    src = orders_source(tmp_path, options={"comment": "#"})
    write(tmp_path / "orders" / "2024-03-10.csv", DAY1)
    first = cfg.lake().table(src.table)
    land(cfg, src, "2024-03-10")
    ids = first.read("2024-03-10").set_index(["shop", "event_ts"])["order_id"]
    # the re-export: rows in another order, a blank line, a comment line, columns reordered
    lines = DAY1.strip().splitlines()
    header = "channel,items,AmountCents,Placed,Shop"

    def reorder(line):
        shop, placed, cents, items, channel = line.split(",")
        return ",".join([channel, items, cents, placed, shop])

    again = "\n".join(["# exported again", header, reorder(lines[3]), "", reorder(lines[2]), reorder(lines[1])])
    write(tmp_path / "reexport" / "2024-03-10.csv", again + "\n")
    land(cfg, src, "2024-03-10", path=str(tmp_path / "reexport" / "{ds}.csv"))
    back = first.read("2024-03-10")
    assert sorted(back["order_id"]) == sorted(ids)
    assert (
        back.set_index(["shop", "event_ts"])["order_id"].loc[("café", utc("2024-03-10 06:59:59"))]
        == ids.loc[("café", utc("2024-03-10 06:59:59"))]
    )


def test_derived_int64_ids_depend_on_content_and_occurrence_only():
    src = Source(
        "clicks",
        keys=(Key("user", "int64"),),
        columns=(Column("x", "double"),),
        lander=FileLander("csv", "c/{ds}.csv"),
    )
    frame = pd.DataFrame(
        {
            "user": [1, 1, 2],
            "event_ts": pd.to_datetime(["2024-01-01"] * 3, utc=True).as_unit("us"),
            "x": [1.0, 1.0, 1.0],
        }
    )
    ids = derived_event_ids(src, frame)
    assert ids.dtype == "int64" and (ids >= 0).all() and ids.is_unique
    flipped = derived_event_ids(src, frame.iloc[[2, 0, 1]].reset_index(drop=True))
    assert sorted(flipped) == sorted(ids) and flipped.iloc[0] == ids.iloc[2]


def test_jsonl_with_epoch_times_latency_and_an_ingested_at_column(cfg, tmp_path):
    src = Source(
        name="app_events",
        keys=(Key("user", "int64", min=1),),
        columns=(Column("kind", "string"), Column("ok", "bool")),
        lander=FileLander("jsonl", str(tmp_path / "app" / "{ds}" / "*.jsonl.gz"), epoch_unit="ms", ingest_latency_s=30),
        event_id="id",
    )
    rows = [
        {"id": 7, "user": 1, "event_ts": 1704110400000, "kind": "open", "ok": True},
        {"id": 8, "user": 2, "event_ts": 1704110401500, "kind": "close", "ok": False},
    ]
    (tmp_path / "app" / "2024-01-01").mkdir(parents=True)
    for i, r in enumerate(rows):  # one file each: the glob reads both, in name order
        with gzip.open(tmp_path / "app" / "2024-01-01" / f"part-{i}.jsonl.gz", "wt") as f:
            f.write(json.dumps(r) + "\n")
    [m] = land(cfg, src, "2024-01-01")
    assert m.rows == 2 and len(m.inputs) == 2
    got = cfg.lake().table(src.table).read("2024-01-01")
    assert got["id"].tolist() == [7, 8] and got["user"].tolist() == [1, 2]
    assert got["event_ts"].tolist() == [utc("2024-01-01 12:00"), utc("2024-01-01 12:00:01.5")]
    assert got["ingested_at"].tolist() == [utc("2024-01-01 12:00:30"), utc("2024-01-01 12:00:31.5")]
    assert got["ok"].tolist() == [True, False] and got["kind"].tolist() == ["open", "close"]


def test_parquet_with_naive_local_timestamps_and_a_mapped_ingested_at(cfg, tmp_path):
    src = Source(
        name="meter",
        keys=(Key("meter", "string"),),
        columns=(Column("kwh", "double"),),
        lander=FileLander(
            "parquet",
            str(tmp_path / "m" / "{ds}.parquet"),
            columns={"event_ts": "read_at", "ingested_at": "received", "kwh": "wh"},
            scale={"kwh": 0.001},
            time_zone="Europe/Berlin",
        ),
    )
    (tmp_path / "m").mkdir()
    pq.write_table(
        pa.table(
            {
                "meter": ["m1", "m2"],
                "read_at": pa.array(pd.to_datetime(["2024-07-01 10:00", "2024-07-01 23:30"]), pa.timestamp("us")),
                "received": pa.array(pd.to_datetime(["2024-07-01 10:05", "2024-07-01 23:59"]), pa.timestamp("us")),
                "wh": [1500, 250],
            }
        ),
        tmp_path / "m" / "2024-07-01.parquet",
    )
    land(cfg, src, "2024-07-01")
    got = cfg.lake().table(src.table).read("2024-07-01")
    assert got["event_ts"].tolist() == [utc("2024-07-01 08:00"), utc("2024-07-01 21:30")]  # CEST = +2h
    assert got["ingested_at"].tolist() == [utc("2024-07-01 08:05"), utc("2024-07-01 21:59")]
    assert got["kwh"].tolist() == [1.5, 0.25]
    assert got["event_id"].dtype == "int64" and got["event_id"].is_unique


# ---- errors: the file, the column, the rule; nothing half written ---------------------------------
@pytest.mark.bad_input("landing: a day's file missing")
def test_a_missing_day_fails_before_any_day_is_written(cfg, tmp_path):
    src = orders_source(tmp_path)
    write(tmp_path / "orders" / "2024-03-10.csv", DAY1)
    with pytest.raises(LandingError) as exc:
        land(cfg, src, "2024-03-10", "2024-03-11")
    msg = str(exc.value)
    assert "2024-03-11.csv" in msg and "file not found" in msg and "rule: lander.path" in msg
    assert cfg.lake().table(src.table).partitions() == []  # day 1 was readable, and not written


@pytest.mark.bad_input("landing: a declared column missing from the file")
def test_a_missing_column_names_the_file_the_column_and_the_mapping(cfg, tmp_path):
    src = orders_source(tmp_path)
    write(tmp_path / "orders" / "2024-03-10.csv", DAY1.replace("AmountCents", "Amount"))
    with pytest.raises(LandingError) as exc:
        land(cfg, src, "2024-03-10")
    e = exc.value
    assert e.file.endswith("2024-03-10.csv") and e.column == "amount" and e.rule == "lander.columns['amount']"
    assert "file column 'AmountCents' is missing" in str(e)


@pytest.mark.bad_input("landing: a value that is not a number")
@pytest.mark.bad_input("landing: a timestamp that does not parse")
@pytest.mark.bad_input("landing: a local time that does not exist (a DST gap)")
@pytest.mark.bad_input("landing: a null key")
def test_a_bad_value_names_the_file_the_column_the_rule_and_the_row(cfg, tmp_path):
    src = orders_source(tmp_path)
    write(tmp_path / "orders" / "2024-03-10.csv", DAY1.replace("99,,app", "9x9,,app"))
    with pytest.raises(LandingError) as exc:
        land(cfg, src, "2024-03-10")
    msg = str(exc.value)
    assert "2024-03-10.csv" in msg and "column 'amount'" in msg and "rule: a number (double)" in msg
    assert "data row(s) [2]" in msg and "'9x9'" in msg
    write(tmp_path / "orders" / "2024-03-10.csv", DAY1.replace("2024-03-10 01:59:59", "yesterday"))
    with pytest.raises(LandingError, match=r"column 'event_ts'.*rule: an ISO 8601 timestamp"):
        land(cfg, src, "2024-03-10")
    write(tmp_path / "orders" / "2024-03-10.csv", DAY1.replace("2024-03-10 01:59:59", "2024-03-10 02:30:00"))
    with pytest.raises(LandingError, match=r"column 'event_ts'.*rule: lander.time_zone"):
        land(cfg, src, "2024-03-10")  # 02:30 does not exist in New York that night
    write(tmp_path / "orders" / "2024-03-10.csv", DAY1.replace("café,", ","))
    with pytest.raises(LandingError, match=r"column 'shop'.*rule: not null"):
        land(cfg, src, "2024-03-10")
    assert cfg.lake().table(src.table).partitions() == []


@pytest.mark.bad_input("landing: a file not in its declared format")
def test_a_garbled_file_and_an_unknown_parser(cfg, tmp_path):
    src = Source(
        "p", keys=(Key("k", "int64"),), columns=(), lander=FileLander("parquet", str(tmp_path / "{ds}.parquet"))
    )
    (tmp_path / "2024-01-01.parquet").write_bytes(b"not parquet")
    with pytest.raises(LandingError, match=r"rule: lander.format.*cannot be read as parquet"):
        land(cfg, src, "2024-01-01")
    with pytest.raises(KeyError, match="unknown parser 'nope'"):
        parser_for("nope")
    with pytest.raises(LakeError):
        land(cfg, src, "2024-01-02", "2024-01-01")


# ---- a damaged file: the error names the file and the line, nothing lands -------------------------------
MORE = "".join(f"{i:03d},2024-03-10 0{i % 10}:{i % 60:02d}:00,{i * 7919 % 10007},1,web\n" for i in range(400))


@pytest.mark.bad_input("file: a truncated gzip file")
def test_a_truncated_gzip_csv_names_the_file_and_the_last_whole_line(cfg, tmp_path):
    src = orders_source(tmp_path, path=str(tmp_path / "orders" / "{ds}.csv.gz"))
    whole = gzip.compress((DAY1 + MORE).encode())
    cut = whole[: len(whole) * 2 // 3]
    recovered = zlib.decompressobj(31).decompress(cut)  # all a reader can get: its whole lines are known
    lines, size = recovered.count(b"\n"), recovered.rfind(b"\n") + 1
    path = tmp_path / "orders" / "2024-03-10.csv.gz"
    path.parent.mkdir(parents=True)
    path.write_bytes(cut)
    with pytest.raises(LandingError) as info:
        land(cfg, src, "2024-03-10")
    assert str(info.value) == (
        f"source 'shop_orders', file {path} (rule: lander.format): truncated gzip file: its {len(cut)} bytes end "
        f"without the end-of-stream marker, after line {lines} ({size} bytes decompressed); what followed "
        f"(line {lines + 1} and any later ones) cannot be known, a compressed stream keeps no index of its lines"
    )
    assert 10 < lines < 400 and cfg.lake().table(src.table).partitions() == []


@pytest.mark.bad_input("file: a byte that is not UTF-8")
def test_a_byte_that_is_not_utf8_names_the_file_line_and_column(cfg, tmp_path):
    src = orders_source(tmp_path)
    path = tmp_path / "orders" / "2024-03-10.csv"
    path.parent.mkdir(parents=True)
    path.write_bytes(DAY1.encode("latin-1"))  # café: 0xE9, not UTF-8
    with pytest.raises(LandingError) as info:
        land(cfg, src, "2024-03-10")
    assert str(info.value) == (
        f"source 'shop_orders', file {path} (rule: lander.format): line 3, byte 4: b'\\xe9' is not utf-8 "
        "(invalid continuation byte); declare the file's encoding in the lander's options"
    )
    land(cfg, orders_source(tmp_path, options={"encoding": "latin-1"}), "2024-03-10")  # declared: it lands
    assert cfg.lake().table(src.table).read("2024-03-10")["shop"].tolist() == ["001", "café", "001"]


@pytest.mark.parametrize(
    "damaged,found",
    [("café,2024-03-10 01:59:59,99,,app,extra", 6), ("café,2024-03-10 01:59:59,99,app", 4)],
    ids=["one-too-many", "one-too-few"],  # pandas pads a short row with nulls: it would have landed
)
@pytest.mark.bad_input("file: a record with the wrong field count")
def test_a_wrong_field_count_names_the_file_and_the_line(cfg, tmp_path, damaged, found):
    src = orders_source(tmp_path)
    path = tmp_path / "orders" / "2024-03-10.csv"
    write(path, "# exported by the shop system\n" + DAY1.replace("café,2024-03-10 01:59:59,99,,app", damaged))
    with pytest.raises(LandingError) as info:
        land(cfg, orders_source(tmp_path, options={"comment": "#"}), "2024-03-10")
    assert str(info.value) == (
        f"source 'shop_orders', file {path} (rule: lander.format): line 4 has {found} fields, the header has 5"
    )
    assert cfg.lake().table(src.table).partitions() == []


def test_split_days_lands_each_day_from_one_file(cfg, tmp_path):
    src = Source(
        "one_file",
        keys=(Key("k", "string"),),
        columns=(),
        lander=FileLander("csv", str(tmp_path / "all.csv"), split_days=True),
    )
    write(
        tmp_path / "all.csv",
        "k,event_ts\na,2024-01-01T10:00:00Z\nb,2024-01-02T00:00:00+01:00\nc,2024-01-02T05:00:00Z\n",
    )
    a, b = land(cfg, src, "2024-01-01", "2024-01-02")
    assert (a.rows, b.rows) == (2, 1)  # b is 2024-01-01 23:00 UTC
    got = cfg.lake().table(src.table).read("2024-01-01")
    assert got["k"].tolist() == ["a", "b"] and got["ingested_at"].tolist() == [utc("2024-01-01") + END] * 2


# ---- the CDNOW parser ------------------------------------------------------------------------------
def test_the_cdnow_parser_lands_what_ingest_cdnow_lands(cfg, tmp_path):
    from features.projects.cdnow.purchases import CDNOW_PURCHASES
    from jobs.ingest.cdnow import ingest_cdnow
    from jobs.lake import Lake

    assert isinstance(CDNOW_PURCHASES.lander, ParserLander) and CDNOW_PURCHASES.lander.parser == "cdnow"
    landed = land(cfg, "cdnow_purchases", "1997-02-01", "1997-02-03")
    shortcut = ingest_cdnow(Lake(str(tmp_path / "other")), "1997-02-01", "1997-02-03")
    assert [m.content_fingerprint for m in landed] == [m.content_fingerprint for m in shortcut]
    assert landed[0].table == "raw_events/cdnow_purchases" and landed[0].producer["parser"] == "cdnow"


def test_lockstep_land_cli(tmp_path, capsys, monkeypatch):
    from jobs.cli import main

    lake = str(tmp_path / "lake")
    assert (
        main(["--lake", lake, "land", "--source", "cdnow_purchases", "--ds", "1997-01-01", "--to", "1997-01-02"]) == 0
    )
    assert "raw_events/cdnow_purchases: 2 partition(s)" in capsys.readouterr().out
    assert main(["--lake", lake, "land", "--source", "nope", "--ds", "1997-01-01"]) == 2
    assert "unknown source 'nope'" in capsys.readouterr().err


# ---- a source declared in a repo of its own: land -> validate -> snapshot -> validate ----------------------
SHOP_REPO = """
from features.source import Column, FileLander, Key, Source, hours
from features.spec import FeatureSet, agg, count

VISITS = Source(
    name="visits_t",
    keys=(Key("shop", "string"),),
    columns=(Column("basket", "double", min=0), Column("device", "string", allowed=("ios", "web"))),
    lander=FileLander("csv", "memory://lockstep-test-visits/{ds}.csv", time_zone="Asia/Tokyo", ingest_latency_s=60),
    event_id_type="string",
)
SHOP_VISITS = FeatureSet(
    "shop_visits_t_v1",
    source=VISITS,
    features=(count("visits_2h", hours(2)), agg("basket_mean_2h", "mean", "basket", hours(2))),
)
"""


def test_a_declared_string_keyed_source_flows_to_a_validated_snapshot(tmp_path):
    import fsspec

    from jobs.quality.validate import validate_partition
    from jobs.snapshots import build_snapshot

    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "visits_t.py").write_text(SHOP_REPO)
    cfg = Config(lake_root=str(tmp_path / "lake"), repo_package=str(tmp_path / "repo"))
    mem = fsspec.filesystem("memory")
    mem.pipe(
        "/lockstep-test-visits/2024-02-01.csv",
        b"shop,event_ts,basket,device\nA,2024-02-01 09:00:00,10.5,ios\nA,2024-02-01 10:30:00,1.5,web\n"
        b"B,2024-02-01 23:59:00,3,web\n",
    )
    try:
        [m] = land(cfg, "visits_t", "2024-02-01")
    finally:
        mem.rm("/lockstep-test-visits", recursive=True)
    assert m.table == "raw_events/visits_t" and m.rows == 2 + 1
    raw = cfg.lake().table("raw_events/visits_t").read("2024-02-01")
    # Tokyo is UTC+9: B's 23:59 local is 14:59 UTC, still 2024-02-01; ingested 60 s later
    assert raw["event_ts"].tolist() == [utc("2024-02-01 00:00"), utc("2024-02-01 01:30"), utc("2024-02-01 14:59")]
    assert raw["ingested_at"].tolist() == [utc("2024-02-01 00:01"), utc("2024-02-01 01:31"), utc("2024-02-01 15:00")]
    r = validate_partition(cfg, "raw_events", "2024-02-01", source="visits_t", alert=False, docs=False)
    assert r.success and r.suite == "raw_events.visits_t"
    build_snapshot(cfg, "2024-02-01", "shop_visits_t_v1", allow_unvalidated=True)
    snap = cfg.lake().table("feature_snapshots/shop_visits_t_v1").read("2024-02-01")
    assert snap["shop"].tolist() == ["A", "B"] and snap["visits_2h"].tolist() == [0, 0]  # as of 02-02 00:00 UTC
    r = validate_partition(
        cfg, "feature_snapshots", "2024-02-01", feature_set="shop_visits_t_v1", alert=False, docs=False
    )
    assert r.success, r.describe()


def test_to_raw_names_the_source_and_the_column():
    from jobs.schemas import to_raw

    src = orders_source(Path("/nowhere"))
    good = pd.DataFrame(
        {
            "order_id": ["a"],
            "shop": ["s"],
            "event_ts": [utc("2024-01-01")],
            "ingested_at": [utc("2024-01-01")],
            "amount": [1.0],
            "items": [1],
            "channel": ["web"],
        }
    )
    assert to_raw(src, good).schema == raw_schema(src)
    with pytest.raises(ValueError, match=r"source 'shop_orders': the frame lacks column\(s\) \['channel'\]"):
        to_raw(src, good.drop(columns="channel"))
    with pytest.raises(ValueError, match=r"source 'shop_orders': null values in non-nullable column\(s\) \['shop'\]"):
        to_raw(src, good.assign(shop=[None]))
    with pytest.raises(ValueError, match=r"source 'shop_orders', column 'amount': not convertible to double"):
        to_raw(src, good.assign(amount=["x"]))


# ---- the bad-file corpus of a CSV lander: each refused, naming the file, the column and the rule ----------
@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            "",
            " (rule: lander.format): cannot be read as csv: No columns to parse from file",
            marks=pytest.mark.bad_input("landing: an empty (0-byte) file"),
            id="empty-file",
        ),
        pytest.param(
            DAY1.replace(",", ";"),
            ", column 'shop' (rule: lander.columns['shop']): file column 'Shop' is missing "
            "(the file has ['Shop;Placed;AmountCents;items;channel'])",
            marks=pytest.mark.bad_input("landing: the wrong delimiter"),
            id="wrong-delimiter",
        ),
        pytest.param(  # pandas renamed the second "items" to "items.1", blaming a missing "channel"
            DAY1.replace("items,channel", "items,items"),
            " (rule: lander.format): line 1: the header names column(s) ['items'] more than once",
            marks=pytest.mark.bad_input("landing: a column named twice in the header"),
            id="duplicate-header",
        ),
        pytest.param(  # landed as an infinite amount before: "nan" was refused, "inf" was not
            DAY1.replace("1234,2,web", "inf,2,web", 1),
            ", column 'amount' (rule: a finite number (double)): 1 bad value(s), first at data row(s) [1]: ['inf']",
            marks=pytest.mark.bad_input("landing: an infinite number"),
            id="inf",
        ),
        pytest.param(  # wrapped around to a negative count (or an OverflowError naming nothing) before
            DAY1.replace(",2,web", ",99999999999999999999,web", 1),
            ", column 'items' (rule: an integer (int64): between -9223372036854775808 and 9223372036854775807): "
            "1 bad value(s), first at data row(s) [1]: ['99999999999999999999']",
            marks=pytest.mark.bad_input("landing: an integer beyond int64"),
            id="beyond-int64",
        ),
        pytest.param(
            DAY1.replace(",2,web", ",9223372036854775808,web", 1).replace(",,app", ",1,app"),
            ", column 'items' (rule: an integer (int64): between -9223372036854775808 and 9223372036854775807): "
            "1 bad value(s), first at data row(s) [1]: ['9223372036854775808']",
            marks=pytest.mark.bad_input("landing: an integer beyond int64"),
            id="int64-max-plus-one",
        ),
        pytest.param(  # the values without an offset were taken as UTC, not New York time, before
            DAY1.replace("2024-03-09 23:30:00", "2024-03-10 04:30:00+00:00", 1),
            ", column 'event_ts' (rule: an ISO 8601 timestamp: with a UTC offset on every value or on none "
            "(this file mixes both)): 2 bad value(s), first at data row(s) [2, 3]: "
            "['2024-03-10 01:59:59', '2024-03-09 23:30:00']",
            marks=pytest.mark.bad_input("landing: timestamps with and without a UTC offset in one file"),
            id="mixed-offsets",
        ),
    ],
)
def test_a_bad_csv_is_refused_naming_the_file_the_column_and_the_rule(cfg, tmp_path, text, message):
    src = orders_source(tmp_path)
    path = tmp_path / "orders" / "2024-03-10.csv"
    write(path, text)
    with pytest.raises(LandingError) as info:
        land(cfg, src, "2024-03-10")
    assert str(info.value) == f"source 'shop_orders', file {path}{message}"
    assert cfg.lake().table(src.table).partitions() == []


def test_a_byte_order_mark_and_offsets_on_every_value_are_not_bad_input(cfg, tmp_path):
    """The tolerated neighbours of the corpus: a UTF-8 BOM before the header, and every timestamp
    carrying its own offset (the lander's time zone is then not needed)."""
    src = orders_source(tmp_path)
    write(tmp_path / "orders" / "2024-03-10.csv", "\ufeff" + DAY1)
    (m,) = land(cfg, src, "2024-03-10")
    plain = cfg.lake().table(src.table).read("2024-03-10")
    offsets = DAY1.replace("2024-03-09 23:30:00", "2024-03-09 23:30:00-05:00").replace(
        "2024-03-10 01:59:59", "2024-03-10 01:59:59-05:00"
    )
    write(tmp_path / "orders" / "2024-03-10.csv", offsets)
    (again,) = land(cfg, src, "2024-03-10")
    assert m.rows == 3 and again.content_fingerprint == m.content_fingerprint
    assert plain["event_ts"].tolist() == [
        utc("2024-03-10 04:30:00"),
        utc("2024-03-10 06:59:59"),
        utc("2024-03-10 04:30:00"),
    ]
