"""jobs.quality.validate on clean data (real CDNOW, generated), batch-size independence, stored results."""

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from test_validate_support import (
    FS,
    RAW_EVENTS,
    RAW_TABLE,
    alerts,
    land,
    predictions_frame,
    raw_day,
    serving_frame,
    snapshot_frame,
    snapshot_producer,
    training_frame,
)

from jobs.ingest.cdnow import ingest_cdnow
from jobs.ingest.cdnow_synthetic import generate_events, iter_event_days
from jobs.lake import MissingPartitionError
from jobs.quality.validate import (
    RESULT_FILE,
    DataQualityError,
    gate_for,
    validate_frame_batches,
    validate_partition,
    validate_range,
)
from jobs.schemas import feature_schema
from jobs.snapshots import build_snapshot

pytest_plugins = ["test_validate_support"]  # fixtures: cdnow, cfg, history, clean_alert_env
pytestmark = pytest.mark.usefixtures("clean_alert_env")


def verdicts(result):
    """Everything that must not depend on how the partition was batched."""
    return [
        (
            o.type,
            json.dumps(o.kwargs, sort_keys=True, default=str),
            o.success,
            o.element_count,
            o.unexpected_count,
            o.missing_count,
            o.error,
            o.skipped,
            round(o.observed, 9) if isinstance(o.observed, float) else o.observed,
        )
        for o in result.outcomes
    ]


# ---- clean data passes ------------------------------------------------------------------------
def test_whole_cdnow_log_passes_the_raw_events_suite_in_batches(cdnow):
    """All 69,659 CDNOW events (the full 546-day span as one stream of 20k-row batches)."""
    start, end = pd.Timestamp("1997-01-01", tz="UTC"), pd.Timestamp("1998-07-01", tz="UTC")
    params = {
        "partition_start": start,
        "partition_end": end,
        "data_start": start,
        "previous_rows": 0,
        "manifest_rows": len(cdnow),
    }
    frames = (cdnow.iloc[i : i + 20_000] for i in range(0, len(cdnow), 20_000))
    result = validate_frame_batches("raw_events", frames, schema=RAW_EVENTS, params=params)
    assert result.success, result.describe()
    assert (result.rows, result.batches) == (69_659, 4)
    unique = next(o for o in result.outcomes if o.type == "expect_column_values_to_be_unique")
    assert (unique.element_count, unique.unexpected_count) == (69_659, 0)


def test_cdnow_lake_partitions_and_snapshots_pass(cfg):
    ingest_cdnow(cfg.lake(), "1997-01-01", "1997-01-31")
    results = validate_range(cfg, "raw_events", "1997-01-25", "1997-01-31")
    assert [r.success for r in results] == [True] * 7
    raw = cfg.lake().table(RAW_TABLE)
    for r in results:  # stored next to the manifest, naming the content it judged
        stored = json.loads(Path(os.path.join(raw.partition_path(r.ds), RESULT_FILE)).read_text())
        assert stored["success"] and stored["manifest"]["content_fingerprint"] == raw.manifest(r.ds).content_fingerprint
        assert os.path.isfile(r.report_path)
        assert (
            r.parameters["previous_rows"]
            == raw.manifest((pd.Timestamp(r.ds) - pd.Timedelta(days=1)).strftime("%Y-%m-%d")).rows
        )
    assert os.path.isfile(os.path.join(cfg.lake_root, "_data_docs", "index.html"))
    build_snapshot(cfg, "1997-01-31", allow_unvalidated=True)
    snap = validate_partition(cfg, "feature_snapshots", "1997-01-31")
    assert snap.success, snap.describe()
    derived = [o for o in snap.outcomes if "derived_from" in o.meta]
    assert len(derived) >= 3 * len(FS.features)  # type, range and (mostly) not-null per feature
    assert alerts(cfg) == []


def test_generated_event_days_and_their_snapshot_pass(cfg):
    # Re-deliveries (same event_id and content, later ingested_at) and late events included.
    generate_events(
        cfg.lake(),
        entities=400,
        events=6_000,
        days=5,
        start="2024-03-01",
        seed=7,
        dup_rate=0.03,
        late_rate=0.05,
        max_late_days=2,
        progress=False,
    )
    results = validate_range(cfg, "raw_events", "2024-03-01", "2024-03-05", batch_rows=700)
    assert all(r.success for r in results), "\n".join(r.describe() for r in results if not r.success)
    assert max(r.batches for r in results) > 1
    build_snapshot(cfg, "2024-03-05", allow_unvalidated=True)
    snap = validate_partition(cfg, "feature_snapshots", "2024-03-05", batch_rows=150)
    assert snap.success and snap.batches > 1, snap.describe()


@pytest.fixture(scope="module")
def generated():
    """Generated events (late arrivals, re-deliveries, null amounts) as one frame."""
    frames = [
        f for _, f in iter_event_days(entities=300, events=8_000, days=40, start="2024-01-01", seed=3, progress=False)
    ]
    return pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize(
    "source,cutoff,day", [("cdnow", "1997-06-02", "1997-06-01"), ("generated", "2024-01-22", "2024-01-21")]
)
def test_training_sets_predictions_and_serving_logs_pass(request, source, cutoff, day):
    events = request.getfixturevalue(source)
    train = training_frame(events, cutoff)
    assert set(train["label"].unique()) == {0, 1}
    t = validate_frame_batches(
        "training_sets",
        [train.iloc[:100], train.iloc[100:]],
        schema=feature_schema(FS, [("label", "int8")]),
        params={"partition_start": pd.Timestamp(cutoff, tz="UTC"), "previous_rows": 0, "manifest_rows": len(train)},
        manifest={"producer": snapshot_producer()},
    )
    assert t.success, t.describe()
    preds = predictions_frame(snapshot_frame(events, day), day)
    p = validate_frame_batches(
        "predictions", [preds.iloc[:150], preds.iloc[150:]], params=_params(day, rows=len(preds))
    )
    assert p.success, p.describe()
    logs = serving_frame(events, day)
    s = validate_frame_batches(
        "serving_logs", [logs.to_pandas()], schema=logs.schema, params=_params(day, rows=len(logs))
    )
    assert s.success, s.describe()


def _params(ds, rows):
    from features.registry import known_fingerprints

    start = pd.Timestamp(ds, tz="UTC")
    return {
        "partition_start": start,
        "partition_end": start + pd.Timedelta(days=1),
        "previous_rows": 0,
        "manifest_rows": rows,
        "known_fingerprints": sorted(known_fingerprints()),
        "validated_at": pd.Timestamp.now(tz="UTC"),
    }


# ---- out of core: the verdict does not depend on the batch size ------------------------------
def test_a_partition_larger_than_the_batch_size_gives_the_same_verdict_and_counts(cfg, cdnow):
    days = [raw_day(cdnow, d) for d in ("1997-01-01", "1997-01-02", "1997-01-03")]
    big = pd.concat(days, ignore_index=True)
    big["ingested_at"] = pd.Timestamp("1997-01-04 12:00", tz="UTC")  # one 1,500-row landing
    n = len(big)
    big.loc[[0, n - 1], "event_id"] = 10**9  # a duplicate split across the first and last batch
    big.loc[n // 2, "event_id"] = int(big.loc[n // 2 + 1, "event_id"])  # and one inside a batch
    big.loc[::7, "amount"] = np.nan  # 14% nulls: over the 10% limit for the whole partition only
    big.loc[:40, "amount"] = np.nan  # ... concentrated in the first batch
    big.loc[[17, n - 3], "n_items"] = -1
    land(cfg, "1997-01-04", big)
    whole = validate_partition(
        cfg,
        "raw_events",
        "1997-01-04",
        batch_rows=10 * n,
        quarantine=False,
        alert=False,
        docs=False,
        raise_on_failure=False,
    )
    split = validate_partition(
        cfg,
        "raw_events",
        "1997-01-04",
        batch_rows=200,
        quarantine=False,
        alert=False,
        docs=False,
        raise_on_failure=False,
        max_keys_in_memory=300,
    )
    assert (whole.batches, split.batches) == (1, -(-n // 200))
    assert verdicts(split) == verdicts(whole)
    failed = {o.type: o for o in whole.failed}
    assert set(failed) == {
        "expect_column_values_to_be_unique",
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_be_between",
    }
    assert failed["expect_column_values_to_be_unique"].unexpected_count == 4
    assert sorted(next(o for o in split.failed if o.type == "expect_column_values_to_be_unique").sample) == sorted(
        [10**9, int(big.loc[n // 2 + 1, "event_id"])]
    )
    nulls = next(o for o in whole.failed if o.kwargs.get("column") == "amount")
    assert nulls.unexpected_count == int(big["amount"].isna().sum())


def test_exact_redeliveries_are_not_duplicates_but_a_changed_copy_is(cfg, cdnow):
    df = raw_day(cdnow, "1997-01-05")
    copy = df.iloc[[3, 8]].copy()
    copy["ingested_at"] = copy["ingested_at"] - pd.Timedelta(hours=1)  # delivered twice, same day
    land(cfg, "1997-01-05", pd.concat([df, copy], ignore_index=True))
    assert validate_partition(cfg, "raw_events", "1997-01-05", batch_rows=100).success
    df = raw_day(cdnow, "1997-01-06")
    changed = df.iloc[[3, 8]].copy()
    changed["amount"] = changed["amount"] + 1.0  # same id, different purchase: a key collision
    land(cfg, "1997-01-06", pd.concat([df, changed], ignore_index=True))
    with pytest.raises(DataQualityError, match=r"unique\(column=event_id\).*4 of"):
        validate_partition(cfg, "raw_events", "1997-01-06", batch_rows=100)


# ---- results, errors, ranges ------------------------------------------------------------------
def test_a_range_validates_every_day_and_quarantines_only_the_bad_one(cfg, cdnow):
    table = cfg.lake().table(RAW_TABLE, RAW_EVENTS)
    for ds in ("1997-01-01", "1997-01-02", "1997-01-03"):
        df = raw_day(cdnow, ds)
        if ds == "1997-01-02":
            df.loc[0, "amount"] = -1.0
        table.write_partition(ds, df, producer={"job": "test"})
    with pytest.raises(DataQualityError) as info:
        validate_range(cfg, "raw_events", "1997-01-01", "1997-01-03")
    assert info.value.ds == "1997-01-02" and "ds=1997-01-02" in str(info.value)
    assert table.partitions() == ["1997-01-01", "1997-01-03"]
    assert [a["partition"] for a in alerts(cfg)] == ["raw_events/cdnow_purchases/ds=1997-01-02"]
    with pytest.raises(MissingPartitionError, match="1997-01-02"):
        validate_range(cfg, "raw_events", "1997-01-01", "1997-01-03")


def test_a_range_in_two_processes_judges_every_day_as_one_process_does(cfg, cdnow):
    """``validate_range(workers=2)``: runs of consecutive days in spawned processes, the last day here."""
    table = cfg.lake().table(RAW_TABLE, RAW_EVENTS)
    days = [f"1997-01-0{d}" for d in range(1, 8)]
    for ds in days:
        df = raw_day(cdnow, ds)
        if ds == "1997-01-05":
            df.loc[0, "amount"] = -1.0
        table.write_partition(ds, df, producer={"job": "test"})
    results = validate_range(cfg, "raw_events", days[0], days[-1], workers=2, raise_on_failure=False)
    assert [(r.ds, r.success) for r in results] == [(d, d != "1997-01-05") for d in days]
    (bad,) = [r for r in results if not r.success]
    assert [o.type for o in bad.failed] == ["expect_column_values_to_be_between"]
    assert table.partitions() == [d for d in days if d != "1997-01-05"]  # quarantined by its worker
    assert [a["partition"] for a in alerts(cfg)] == ["raw_events/cdnow_purchases/ds=1997-01-05"]
    for ds in table.partitions():  # each stored result is the one returned
        stored = json.loads(Path(table.partition_path(ds), RESULT_FILE).read_text())
        assert stored["success"] is True and stored["run_id"] == results[days.index(ds)].run_id


def test_a_missing_day_does_not_stop_the_range(cfg, cdnow):
    table = cfg.lake().table(RAW_TABLE, RAW_EVENTS)
    for ds in ("1997-01-01", "1997-01-03", "1997-01-04"):
        df = raw_day(cdnow, ds)
        if ds == "1997-01-03":
            df.loc[0, "amount"] = -1.0
        table.write_partition(ds, df, producer={"job": "test"})
    with pytest.raises(MissingPartitionError) as info:
        validate_range(cfg, "raw_events", "1997-01-01", "1997-01-05")
    assert info.value.missing == ["1997-01-02", "1997-01-05"]
    assert info.value.__notes__ == ["1 of 5 partitions failed: 1997-01-03"]
    assert table.partitions() == ["1997-01-01", "1997-01-04"]  # 03 validated and quarantined all the same
    for ds in ("1997-01-01", "1997-01-04"):
        assert json.loads(Path(table.partition_path(ds), RESULT_FILE).read_text())["success"] is True
    results = validate_range(cfg, "raw_events", "1997-01-01", "1997-01-04", skip_missing=True)
    assert [(r.ds, r.success) for r in results] == [("1997-01-01", True), ("1997-01-04", True)]


def test_data_quality_error_survives_pickling(cfg, cdnow):
    df = raw_day(cdnow, "1997-01-01")
    df.loc[0, "customer_id"] = -5
    land(cfg, "1997-01-01", df)
    with pytest.raises(DataQualityError) as info:
        validate_partition(cfg, "raw_events", "1997-01-01", alert=False)
    again = pickle.loads(pickle.dumps(info.value))
    assert str(again) == str(info.value) and again.quarantine_path == info.value.quarantine_path
    assert [o.headline() for o in again.failed] == [o.headline() for o in info.value.failed]
    assert "customer_id" in str(again) and "-5" in str(again)


def test_report_renders_each_failed_expectation(cfg, cdnow):
    df = raw_day(cdnow, "1997-01-01")
    df.loc[0, "amount"] = -3.25
    land(cfg, "1997-01-01", df)
    with pytest.raises(DataQualityError) as info:
        validate_partition(cfg, "raw_events", "1997-01-01", alert=False)
    html = Path(info.value.report_path).read_text()
    assert "-3.25" in html and "amount" in html and "Failed" in html
    suite_page = os.path.join(cfg.lake_root, "_data_docs", "expectations", "raw_events", "cdnow_purchases.html")
    assert "Negative or absurd values" in Path(suite_page).read_text()


def test_gate_publishes_a_clean_snapshot_with_its_result(cfg, cdnow):
    table = cfg.lake().table(f"feature_snapshots/{FS.name}", feature_schema(FS))
    m = table.write_partition(
        "1997-01-10",
        snapshot_frame(cdnow, "1997-01-10"),
        producer=snapshot_producer(),
        gate=gate_for(cfg, "feature_snapshots"),
    )
    stored = json.loads(Path(os.path.join(table.partition_path("1997-01-10"), RESULT_FILE)).read_text())
    assert stored["success"] and stored["manifest"]["content_fingerprint"] == m.content_fingerprint
    assert table.exists("1997-01-10") and table.quarantined("1997-01-10") == []


def test_missing_partition_is_not_a_data_quality_verdict(cfg):
    with pytest.raises(MissingPartitionError, match="1997-01-01"):
        validate_partition(cfg, "raw_events", "1997-01-01")
    assert alerts(cfg) == []


def test_frames_without_a_schema_or_parameters_report_what_was_skipped(cdnow):
    df = raw_day(cdnow, "1997-01-01")
    result = validate_frame_batches("raw_events", [df])
    assert result.success
    skipped = {o.kwargs.get("column") or o.type: o.skipped for o in result.outcomes if o.skipped}
    assert "manifest_rows" in skipped["expect_table_row_count_to_equal"]
    assert set(skipped) >= {"ingested_at", "event_ts"}
    with pytest.raises(ValueError, match="no batches"):
        validate_frame_batches("raw_events", [])


def test_a_nullable_integer_key_split_across_batches_stays_exact(cdnow):
    # pandas turns an int64 column with nulls into floats in the batch that holds the null only.
    df = raw_day(cdnow, "1997-01-01")
    tbl = pa.Table.from_pandas(df, schema=RAW_EVENTS.set(0, pa.field("event_id", pa.int64())), preserve_index=False)
    ids = tbl.column("event_id").to_pylist()
    ids[5], ids[-1] = None, ids[0]
    tbl = tbl.set_column(0, "event_id", pa.array(ids, pa.int64()))
    batches = [b.to_pandas() for b in tbl.to_batches(max_chunksize=50)]
    assert batches[0]["event_id"].dtype == "float64" and batches[-1]["event_id"].dtype == "int64"
    result = validate_frame_batches("raw_events", batches, schema=tbl.schema)
    unique = next(o for o in result.outcomes if o.type == "expect_column_values_to_be_unique")
    assert (unique.unexpected_count, unique.sample) == (2, [ids[0]])


def test_a_redelivery_in_a_batch_that_types_its_columns_differently_is_still_the_same_event(cdnow):
    df = raw_day(cdnow, "1997-01-01")
    first, second = df.iloc[:100].copy(), df.iloc[100:].copy()
    copy = df.iloc[[0]].assign(ingested_at=df.loc[0, "ingested_at"] - pd.Timedelta(hours=2))
    second = pd.concat([second, copy], ignore_index=True)
    second["n_items"] = second["n_items"].astype("float64")
    second.loc[1, "n_items"] = np.nan  # pandas gives this batch float64 item counts
    result = validate_frame_batches("raw_events", [first, second], schema=RAW_EVENTS)
    unique = next(o for o in result.outcomes if o.type == "expect_column_values_to_be_unique")
    assert (unique.success, unique.element_count, unique.unexpected_count) == (True, len(df) + 1, 0)
