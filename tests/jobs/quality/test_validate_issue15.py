"""Silent corruption that passed every gate before issue 15 (items 1-3), provoked on CDNOW's real rows:
each bad version of a validated day is a clear error naming the table, the column and the rule, is
quarantined and alerted, nothing downstream is built from it, and the good version stays readable."""

from __future__ import annotations

import gzip
import os

import numpy as np
import pandas as pd
import pytest
from test_validate_support import FS, RAW_EVENTS, RAW_TABLE, alerts, assert_stopped, tamper

from jobs.ingest.cdnow import CDNOW_PATH, iter_ingest_days
from jobs.ingest.landing import land
from jobs.lake import CANDIDATE, KEY_ENV, CorruptPartitionError
from jobs.quality.validate import DataQualityError, validate_partition
from jobs.schemas import raw_schema, to_raw
from jobs.snapshots import build_snapshot

pytest_plugins = ["test_validate_support"]  # fixtures: cdnow, cfg, history, clean_alert_env
pytestmark = pytest.mark.usefixtures("clean_alert_env")

HISTORY = ("1997-01-01", "1997-01-02", "1997-01-03", "1997-01-04")
DAY = "1997-01-05"


def day_of(events: pd.DataFrame, ds: str) -> pd.DataFrame:
    ((_, part),) = iter_ingest_days(events, ds, ds)
    return to_raw(FS.source, part).to_pandas()


def publish_validated(cfg, events: pd.DataFrame, days) -> None:
    table = cfg.lake().table(RAW_TABLE, RAW_EVENTS)
    for ds in days:
        table.write_partition(ds, day_of(events, ds), producer={"job": "ingest_cdnow"})
        assert validate_partition(cfg, "raw_events", ds, alert=False, docs=False).success


def stopped_rewrite(cfg, ds: str, frame: pd.DataFrame | None, *phrases: str, staged=False) -> DataQualityError:
    """Write ``frame`` over the validated day ``ds`` (``staged``: a candidate is already pending): the
    candidate fails, is quarantined and alerted, no snapshot of the day exists, and readers keep the
    validated version."""
    table = cfg.lake().table(RAW_TABLE, RAW_EVENTS)
    good = table.manifest(ds)
    good_rows = table.read(ds)
    if not staged:
        table.write_partition(ds, frame, producer={"job": "re-export"})
    assert table.pending(ds) is not None and table.manifest(ds) == good  # staged, not visible
    with pytest.raises(DataQualityError) as info:
        validate_partition(cfg, "raw_events", ds)
    err, msg = info.value, str(info.value)
    assert msg.startswith(f"data quality raw_events {RAW_TABLE}/ds={ds}: FAILED"), msg
    for phrase in phrases:
        assert phrase in msg, f"{phrase!r} not in:\n{msg}"
    assert f"quarantined: {err.quarantine_path}" in msg and os.path.isdir(err.quarantine_path)
    assert table.quarantined(ds) == [err.quarantine_path] and table.pending(ds) is None
    assert f"kept: {RAW_TABLE}/ds={ds} stays at its validated version {good.content_fingerprint[:16]}" in msg
    assert table.manifest(ds) == good
    pd.testing.assert_frame_equal(table.read(ds), good_rows)
    (line,) = [a for a in alerts(cfg) if a["partition"] == f"{RAW_TABLE}/ds={ds}"]
    assert line["quarantine"] == err.quarantine_path and line["dataset"] == "raw_events"
    assert [o.headline() for o in err.failed] == line["failed"] and line["failed"]
    assert not cfg.lake().table(f"feature_snapshots/{FS.name}").exists(ds)  # nothing downstream
    return err


# ---- item 1: event ids that are not stable ------------------------------------------------------------
@pytest.mark.bad_input("validation: an event id an earlier day holds for another event")
def test_an_id_an_earlier_day_holds_for_another_event_is_an_error_naming_both_days(cfg, cdnow):
    """The CDNOW parser before issue 15 numbered events by line: a re-export with one line deleted moves
    every later id onto the line above it, often another customer's purchase of an earlier day."""
    numbered = cdnow.assign(event_id=np.arange(1, len(cdnow) + 1))
    publish_validated(cfg, numbered, [*HISTORY, DAY])
    shifted = numbered.drop(index=9).assign(event_id=np.arange(1, len(cdnow)))
    bad = day_of(shifted, DAY)
    earlier = pd.concat([day_of(numbered, d) for d in HISTORY])
    content = ["customer_id", "event_ts", "n_items", "amount", "category"]
    both = bad.merge(earlier, on="event_id", suffixes=("", "_before"))
    clash = both[(both[content].to_numpy() != both[[f"{c}_before" for c in content]].to_numpy()).any(axis=1)]
    assert len(clash) >= 10  # of the day's 256 purchases; the kernel's dedup would have dropped them all
    err = stopped_rewrite(
        cfg,
        DAY,
        bad,
        "expect_column_values_to_not_be_in_set(column=event_id",
        "[unstable event ids]",
        f"{len(clash)} of {len(bad)} rows unexpected",
    )
    (failed,) = err.failed
    first = clash.sort_values("event_id").iloc[0]
    day_before = pd.Timestamp(first["event_ts_before"]).date().isoformat()
    assert (
        f"event_id {first['event_id']} is on ds={day_before} as {{customer_id={first['customer_id_before']}, "
        in str(err)
    )
    assert f"and on ds={DAY} as {{customer_id={first['customer_id']}, " in str(err)
    assert failed.kwargs["value_set"] == sorted(clash["event_id"].tolist())


def test_a_re_delivery_of_an_earlier_event_is_a_harmless_duplicate(cfg, cdnow):
    publish_validated(cfg, cdnow, HISTORY)
    again = day_of(cdnow, "1997-01-02").head(3).assign(ingested_at=pd.Timestamp(DAY, tz="UTC"))
    frame = pd.concat([day_of(cdnow, DAY), again], ignore_index=True)
    cfg.lake().table(RAW_TABLE, RAW_EVENTS).write_partition(DAY, frame, producer={"job": "re-delivery"})
    result = validate_partition(cfg, "raw_events", DAY, docs=False)
    assert result.success, result.describe()
    assert result.parameters["event_ids_reused"] == []


def test_re_landing_a_re_export_without_header_and_with_a_deleted_line_keeps_every_id(cfg, tmp_path):
    """The real parser: the ids of the re-export are those already landed, so it validates and the days
    it did not change are byte-for-byte the same content."""
    land(cfg, "cdnow_purchases", HISTORY[0], DAY)
    for ds in (*HISTORY, DAY):
        assert validate_partition(cfg, "raw_events", ds, alert=False, docs=False).success
    table = cfg.lake().table(RAW_TABLE)
    before = {ds: table.manifest(ds).content_fingerprint for ds in (*HISTORY, DAY)}
    lines = gzip.decompress(CDNOW_PATH.read_bytes()).decode().splitlines()
    assert lines[10].split()[:2] == ["00004", "19970101"]  # customer 4's only purchase that day
    path = tmp_path / "reexport.txt"
    path.write_text("\n".join(lines[1:10] + lines[11:]) + "\n")
    land(cfg, "cdnow_purchases", HISTORY[0], DAY, path=str(path))
    for ds in (*HISTORY, DAY):
        assert validate_partition(cfg, "raw_events", ds, alert=False, docs=False).success
        now = table.manifest(ds)
        assert (now.content_fingerprint == before[ds]) == (ds != HISTORY[0]), ds
    assert len(table.read(HISTORY[0])) == len(day_of_shipped(HISTORY[0])) - 1


def day_of_shipped(ds: str) -> pd.DataFrame:
    from jobs.ingest.cdnow import read_cdnow

    return day_of(read_cdnow(), ds)


# ---- item 2: a day delivered twice ----------------------------------------------------------------------
def _reexport(tmp_path, edit) -> str:
    lines = gzip.decompress(CDNOW_PATH.read_bytes()).decode().splitlines()
    path = tmp_path / "reexport.txt"
    path.write_text("\n".join(edit(lines)) + "\n")
    return str(path)


@pytest.mark.bad_input("validation: a day delivered twice under new ids")
def test_a_day_delivered_twice_under_new_ids_is_refused(cfg, tmp_path):
    """The day's lines twice in the export: the parser numbers the copies on (occurrence 1, 2, ...), so
    every id is new and unique and every count of the day doubles."""
    land(cfg, "cdnow_purchases", HISTORY[0], DAY)
    for ds in (*HISTORY, DAY):
        assert validate_partition(cfg, "raw_events", ds, alert=False, docs=False).success
    day = DAY.replace("-", "")
    path = _reexport(tmp_path, lambda lines: lines + [line for line in lines[1:] if line.split()[1] == day])
    land(cfg, "cdnow_purchases", DAY, path=path)
    table = cfg.lake().table(RAW_TABLE)
    staged = table.pending(DAY)
    rows = table.manifest(DAY).rows
    assert staged.manifest.rows == 2 * rows
    err = stopped_rewrite_landed(
        cfg,
        DAY,
        "expect_compound_columns_to_be_unique(column_list=",
        "[duplicate delivery]",
        f"{2 * rows} of {2 * rows} rows unexpected",
    )
    assert [o.type for o in err.failed] == ["expect_compound_columns_to_be_unique"]  # ids are all unique


@pytest.mark.bad_input("validation: a row-count surge (a week stamped as one day)")
def test_a_day_with_many_times_the_recent_rows_is_refused(cfg, cdnow):
    """An export of the wrong range stamped as one day: a week of purchases as 1997-01-05's."""
    publish_validated(cfg, cdnow, [*HISTORY, DAY])
    week = [day_of(cdnow, d) for d in ("1997-01-05", "1997-01-06", "1997-01-07", "1997-01-08")]
    end = pd.Timestamp(DAY, tz="UTC") + pd.Timedelta(days=1) - pd.Timedelta(microseconds=1)
    bad = pd.concat(week, ignore_index=True).assign(event_ts=pd.Timestamp(DAY, tz="UTC"), ingested_at=end)
    rows = [len(day_of(cdnow, d)) for d in HISTORY]
    median = float(np.median(rows))
    err = stopped_rewrite(
        cfg,
        DAY,
        bad,
        f"expect_table_row_count_to_be_between(max_value={median * 3}) [row-count surge]: observed {len(bad)}",
        f"median of the rows of {', '.join(HISTORY)}: {median:g}",
    )
    assert [o.type for o in err.failed] == ["expect_table_row_count_to_be_between"]


def stopped_rewrite_landed(cfg, ds: str, *phrases: str) -> DataQualityError:
    """A candidate the real lander staged over validated ``ds`` fails, is quarantined and alerted; the
    validated version stays readable and no snapshot of the day is built."""
    table = cfg.lake().table(RAW_TABLE)
    good, good_rows = table.manifest(ds), table.read(ds)
    with pytest.raises(DataQualityError) as info:
        validate_partition(cfg, "raw_events", ds)
    err, msg = info.value, str(info.value)
    assert msg.startswith(f"data quality raw_events {RAW_TABLE}/ds={ds}: FAILED"), msg
    for phrase in phrases:
        assert phrase in msg, f"{phrase!r} not in:\n{msg}"
    assert f"kept: {RAW_TABLE}/ds={ds} stays at its validated version {good.content_fingerprint[:16]}" in msg
    assert table.quarantined(ds) == [err.quarantine_path] and table.pending(ds) is None
    assert table.manifest(ds) == good
    pd.testing.assert_frame_equal(table.read(ds), good_rows)
    (line,) = [a for a in alerts(cfg) if a["partition"] == f"{RAW_TABLE}/ds={ds}"]
    assert line["quarantine"] == err.quarantine_path and any(phrases[0] in f for f in line["failed"])
    assert not cfg.lake().table(f"feature_snapshots/{FS.name}").exists(ds)
    return err


# ---- item 3: values the suites had no rule for ------------------------------------------------------------
@pytest.mark.parametrize(
    ("edit", "phrases"),
    [
        pytest.param(
            lambda df: df.assign(customer_id=df["customer_id"].where(df.index % 50 != 0, 0)),
            ("expect_column_values_to_be_between(column=customer_id, min_value=1) [key outside its domain]",),
            id="customer-id-0",
            marks=pytest.mark.bad_input("validation: a key outside its domain"),
        ),
        pytest.param(
            lambda df: df.assign(category=df["category"].where(df.index % 40 != 0, "bundle")),
            ("expect_column_values_to_be_in_set(column=category", "[unknown category]", "e.g. bundle"),
            id="new-category",
            marks=pytest.mark.bad_input("validation: an unknown category"),
        ),
    ],
)
def test_a_key_outside_its_domain_or_a_new_category_is_refused(cfg, cdnow, edit, phrases):
    """Customer 0 (a placeholder of the shop system) and a category no price band produces: both passed
    before (CDNOW declared customer_id >= 0, and nothing stopped a new value but a declared set)."""
    publish_validated(cfg, cdnow, [*HISTORY, DAY])
    bad = edit(day_of(cdnow, DAY))
    n = int((bad.index % (50 if "customer_id" in phrases[0] else 40) == 0).sum())
    err = stopped_rewrite(cfg, DAY, bad, *phrases, f"{n} of {len(bad)} rows unexpected")
    assert len(err.failed) == 1


FLIGHT_DAYS = ("2013-01-01", "2013-01-02")  # from the data's first day (data_start)


@pytest.fixture
def flights_cfg(cfg):
    land(cfg, "flights", *FLIGHT_DAYS)
    for ds in FLIGHT_DAYS:
        assert validate_partition(cfg, "raw_events", ds, source="flights", alert=False, docs=False).success
    return cfg


@pytest.mark.parametrize(
    ("column", "value", "share", "rule"),
    [
        ("origin", "SWF", 0.01, "expect_column_values_to_be_in_set(column=origin"),  # a fourth airport fed in
        ("carrier", "XE", 0.01, "expect_column_values_to_be_in_set(column=carrier"),
        ("dest", "YYZ", 0.05, "expect_column_values_to_be_in_set(column=dest"),  # more than the 1% of drift
    ],
)
@pytest.mark.bad_input("validation: an unknown category")
def test_flights_values_never_seen_are_refused(flights_cfg, column, value, share, rule):
    cfg, ds = flights_cfg, FLIGHT_DAYS[-1]
    table = cfg.lake().table("raw_events/flights", raw_schema(cfg.repo().source("flights")))
    good, good_rows = table.manifest(ds), table.read(ds)
    bad = good_rows.copy()
    hit = np.arange(len(bad)) < max(1, int(len(bad) * share))
    bad.loc[hit, column] = value
    table.write_partition(ds, bad, producer={"job": "re-export"})
    with pytest.raises(DataQualityError) as info:
        validate_partition(cfg, "raw_events", ds, source="flights")
    msg = str(info.value)
    assert msg.startswith(f"data quality raw_events raw_events/flights/ds={ds}: FAILED"), msg
    assert rule in msg and f"e.g. {value}" in msg and f"{int(hit.sum())} of {len(bad)} rows unexpected" in msg, msg
    assert len(info.value.failed) == 1, msg
    assert table.manifest(ds) == good and table.pending(ds) is None
    assert table.quarantined(ds) == [info.value.quarantine_path]
    pd.testing.assert_frame_equal(table.read(ds), good_rows)
    (line,) = [a for a in alerts(cfg) if a["partition"] == f"raw_events/flights/ds={ds}"]
    assert line["quarantine"] == info.value.quarantine_path and any(rule in f for f in line["failed"])
    assert not cfg.lake().table("feature_snapshots/origin_congestion_v1").exists(ds)


def test_a_new_destination_on_a_few_flights_is_tolerated_drift(flights_cfg):
    cfg, ds = flights_cfg, FLIGHT_DAYS[-1]
    table = cfg.lake().table("raw_events/flights", raw_schema(cfg.repo().source("flights")))
    rows = table.read(ds)
    rows.loc[:2, "dest"] = "YYZ"  # 3 of ~900 flights: a new route
    table.write_partition(ds, rows, producer={"job": "re-export"})
    result = validate_partition(cfg, "raw_events", ds, source="flights", docs=False)
    assert result.success, result.describe()
    (dest,) = [o for o in result.outcomes if o.kwargs.get("column") == "dest" and "value_set" in o.kwargs]
    assert (dest.unexpected_count, dest.sample, dest.kwargs["mostly"]) == (3, ["YYZ"], 0.99)


# ---- item 4: tampering the manifest agrees with ---------------------------------------------------------
def ten_times_one_amount(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[3, "amount"] = df.loc[3, "amount"] * 10 + 1  # one purchase inflated: count, schema, ids unchanged
    return df


@pytest.mark.bad_input("lake: a data file edited, its manifest's size and sha256 updated")
def test_a_validated_day_rewritten_with_its_size_and_sha256_updated_is_refused_and_quarantined(cfg, cdnow):
    """Before item 4 the readers only compared the files with the manifest's checksums, which the tamperer
    had updated: the snapshot of the day was built from the edited rows. Now the content fingerprint is
    recomputed: the snapshot job fails loudly, validation quarantines the day and alerts."""
    publish_validated(cfg, cdnow, [*HISTORY, DAY])
    lake = cfg.lake()
    _, path = tamper(lake, RAW_TABLE, DAY, ten_times_one_amount)
    with pytest.raises(CorruptPartitionError) as info:
        build_snapshot(cfg, DAY)
    assert f"table {RAW_TABLE!r} ds={DAY}: file " in str(info.value) and "content fingerprint" in str(info.value)
    assert not lake.table(f"feature_snapshots/{FS.name}").exists(DAY)
    with pytest.raises(DataQualityError) as failed:
        validate_partition(cfg, "raw_events", DAY)
    assert_stopped(
        cfg,
        failed.value,
        "raw_events",
        RAW_TABLE,
        DAY,
        "[corrupt or truncated partition]",
        f"CorruptPartitionError: table {RAW_TABLE!r} ds={DAY}: file ",
        "content fingerprint of the rows read is ",
        os.path.basename(path),
        downstream=lambda: build_snapshot(cfg, DAY),
    )
    assert os.path.basename(path) in os.listdir(failed.value.quarantine_path)
    assert len(lake.table(RAW_TABLE).read(HISTORY[-1])) == len(day_of(cdnow, HISTORY[-1]))  # other days intact


def test_a_tampered_candidate_is_quarantined_and_the_validated_version_stays(cfg, cdnow):
    publish_validated(cfg, cdnow, [*HISTORY, DAY])
    table = cfg.lake().table(RAW_TABLE, RAW_EVENTS)
    good, good_rows = table.manifest(DAY), table.read(DAY)
    table.write_partition(DAY, day_of(cdnow, DAY), producer={"job": "re-export"})  # staged: the day is validated
    tamper(cfg.lake(), RAW_TABLE, DAY, ten_times_one_amount, manifest_name=CANDIDATE)
    err = stopped_rewrite(cfg, DAY, None, "[corrupt or truncated partition]", "content fingerprint", staged=True)
    assert table.manifest(DAY) == good and good.content_fingerprint[:16] in str(err)
    pd.testing.assert_frame_equal(table.read(DAY), good_rows)


@pytest.mark.bad_input("lake: a manifest edited, its content fingerprint recomputed (signed lake)")
def test_with_a_lake_key_a_careful_tamperer_who_recomputes_the_fingerprint_is_refused(cfg, cdnow, monkeypatch):
    """The tamperer rewrites the file and recomputes sizes, sha256 and the content fingerprint: nothing in
    the manifest disagrees with the files any more, only the signature under the lake key."""
    monkeypatch.setenv(KEY_ENV, "lockstep-test-lake-key")
    publish_validated(cfg, cdnow, [*HISTORY, DAY])
    before = cfg.lake().table(RAW_TABLE).read(DAY)["amount"].iloc[3]
    tamper(cfg.lake(), RAW_TABLE, DAY, ten_times_one_amount, fingerprint=True)
    monkeypatch.delenv(KEY_ENV)
    assert cfg.lake().table(RAW_TABLE).read(DAY)["amount"].iloc[3] == before * 10 + 1  # unsigned, it passes
    monkeypatch.setenv(KEY_ENV, "lockstep-test-lake-key")
    with pytest.raises(CorruptPartitionError, match="manifest signature does not match the lake key"):
        build_snapshot(cfg, DAY)
    with pytest.raises(DataQualityError) as failed:
        validate_partition(cfg, "raw_events", DAY)
    assert_stopped(
        cfg,
        failed.value,
        "raw_events",
        RAW_TABLE,
        DAY,
        "[corrupt or truncated partition]",
        "manifest signature does not match the lake key (the manifest was edited, or signed with another key)",
        downstream=lambda: build_snapshot(cfg, DAY),
    )
