"""Bad inputs, one kind per test. Each must give a clear DataQualityError, a quarantined partition,
an alert line, and nothing downstream: the next job fails loudly on the missing partition."""

import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from test_validate_support import (
    DAY,
    DAYS,
    FS,
    RAW_EVENTS,
    RAW_TABLE,
    alerts,
    assert_stopped,
    land,
    predictions_frame,
    raw_day,
    serving_frame,
    snapshot_frame,
    snapshot_producer,
)

from jobs.quality.validate import DataQualityError, gate_for, validate_partition
from jobs.schemas import feature_schema
from jobs.snapshots import build_snapshot

pytest_plugins = ["test_validate_support"]  # fixtures: cdnow, cfg, history, clean_alert_env
pytestmark = pytest.mark.usefixtures("clean_alert_env")


def stopped_raw(cfg, frame, *phrases, batch_rows=None, landed=True):
    if landed:
        land(cfg, DAY, frame)
    with pytest.raises(DataQualityError) as info:
        validate_partition(cfg, "raw_events", DAY, batch_rows=batch_rows)
    assert_stopped(cfg, info.value, "raw_events", RAW_TABLE, DAY, *phrases, downstream=lambda: build_snapshot(cfg, DAY))
    return info.value


def test_missing_column(history, cdnow):
    err = stopped_raw(
        history,
        raw_day(cdnow, DAY).drop(columns=["amount"]),
        "expect_table_columns_to_match_ordered_list",
        'missing columns ["amount"]',
        "[schema drift]",
    )
    assert {o.kwargs.get("column") for o in err.failed} >= {"amount"}


def test_extra_column_with_a_typo_in_its_name(history, cdnow):
    df = raw_day(cdnow, DAY)
    df["cusotmer_id"] = df["customer_id"]
    err = stopped_raw(history, df, 'unexpected columns ["cusotmer_id"]')
    assert [o.type for o in err.failed] == ["expect_table_columns_to_match_ordered_list"]


def test_wrong_dtype(history, cdnow):
    df = raw_day(cdnow, DAY)
    df["amount"] = df["amount"].map(lambda v: f"{v:.2f}")
    stopped_raw(history, df, "expect_column_values_to_be_of_type(column=amount, type_=double)", "observed string")


def test_null_keys(history, cdnow):
    df = raw_day(cdnow, DAY)
    df["event_id"] = pd.array(df["event_id"], dtype="Int64")
    df.loc[[3, 7, 11], "event_id"] = pd.NA
    stopped_raw(
        history, df, f"expect_column_values_to_not_be_null(column=event_id) [key nulls]: 3 of {len(df)} rows unexpected"
    )


def test_duplicate_event_ids_within_a_batch(history, cdnow):
    df = raw_day(cdnow, DAY)
    dup = int(df.loc[4, "event_id"])
    df.loc[5, "event_id"] = dup  # a different purchase given the same id
    err = stopped_raw(
        history,
        df,
        "expect_column_values_to_be_unique(column=event_id) [duplicate keys]: "
        f"2 of {len(df)} rows unexpected; e.g. {dup}",
    )
    assert err.result.batches == 1


def test_duplicate_event_ids_across_batches(history, cdnow):
    df = raw_day(cdnow, DAY)
    first = int(df.loc[0, "event_id"])
    df.loc[len(df) - 1, "event_id"] = first  # first and last row: never in the same batch of 50
    err = stopped_raw(history, df, f"2 of {len(df)} rows unexpected; e.g. {first}", batch_rows=50)
    assert err.result.batches == -(-len(df) // 50) > 1
    assert [o.type for o in err.failed] == ["expect_column_values_to_be_unique"]


def test_future_timestamps(history, cdnow):
    df = raw_day(cdnow, DAY)
    df.loc[[2, 9], "event_ts"] = pd.Timestamp("1997-03-06", tz="UTC")
    err = stopped_raw(history, df, "[future timestamps]: 2 of", "1997-03-06T00:00:00+00:00")
    assert any(o.type == "expect_column_pair_values_a_to_be_greater_than_b" for o in err.failed)


def test_timestamps_in_the_wrong_unit(history, cdnow):
    df = raw_day(cdnow, DAY)
    seconds = df["event_ts"].astype("int64") // 1_000_000  # epoch seconds, read as microseconds
    df["event_ts"] = pd.to_datetime(seconds, unit="us", utc=True)
    stopped_raw(history, df, "[timestamps before the data's start]", f"{len(df)} of {len(df)} rows", "1970-01-01T00:14")


def test_timestamps_shifted_to_local_time(history, cdnow):
    df = raw_day(cdnow, DAY)
    for col in ("event_ts", "ingested_at"):  # Tokyo wall clock written as if it were UTC
        df[col] = df[col].dt.tz_convert("Asia/Tokyo").dt.tz_localize(None).dt.tz_localize("UTC")
    err = stopped_raw(
        history,
        df,
        "expect_column_values_to_be_between(column=ingested_at",
        "[wrong timestamp unit or time zone]",
        "1997-03-04T08:59:59",
    )
    assert {o.kwargs.get("column") for o in err.failed} == {"ingested_at"}


def test_negative_amounts(history, cdnow):
    df = raw_day(cdnow, DAY)
    df.loc[[1, 2, 3], "amount"] = [-12.99, -0.01, -150.0]
    stopped_raw(
        history,
        df,
        "expect_column_values_to_be_between(column=amount, min_value=0, max_value=50000) "
        "[negative or absurd amounts]: 3 of",
        "-12.99",
    )


def test_nan_and_inf(history, cdnow):
    df = raw_day(cdnow, DAY)
    df.loc[[1, 2], "amount"] = [np.inf, -np.inf]
    df.loc[3, "amount"] = np.nan
    err = stopped_raw(history, df, "2 of", "inf", "-inf")
    mean = next(o for o in err.failed if o.type == "expect_column_mean_to_be_between")
    assert np.isnan(mean.observed) or np.isinf(mean.observed)


def test_empty_partition(history):
    history.lake().table(RAW_TABLE, RAW_EVENTS).write_partition(
        DAY, RAW_EVENTS.empty_table(), producer={"job": "ingest_cdnow"}
    )
    stopped_raw(history, None, "[empty partition]: observed 0", landed=False)


def test_truncated_parquet_file(history, cdnow):
    m = (
        history.lake()
        .table(RAW_TABLE, RAW_EVENTS)
        .write_partition(DAY, raw_day(cdnow, DAY), producer={"job": "ingest_cdnow"})
    )
    path = os.path.join(history.lake().table(RAW_TABLE).partition_path(DAY), m.files[0]["name"])
    with open(path, "r+b") as fh:
        fh.truncate(m.files[0]["bytes"] // 2)
    err = stopped_raw(
        history, None, "[corrupt or truncated partition]", "CorruptPartitionError", m.files[0]["name"], landed=False
    )
    assert err.result.rows == 0 and all(o.skipped for o in err.result.outcomes if o.success)


def test_row_count_collapse(history, cdnow):
    df = raw_day(cdnow, DAY).head(5)  # a partial export
    prev = len(raw_day(cdnow, DAYS[-1]))
    err = stopped_raw(history, df, "[row-count collapse]: observed 5", f"min_value={prev * 0.2}")
    assert [o.risk for o in err.failed] == ["row-count collapse"]


def test_null_rate_spike(history, cdnow):
    df = raw_day(cdnow, DAY)
    nulls = np.arange(len(df)) % 5 < 3  # 60% of amounts missing
    df.loc[nulls, "amount"] = np.nan
    err = stopped_raw(
        history,
        df,
        "expect_column_values_to_not_be_null(column=amount, mostly=0.9) "
        f"[null-rate spike]: {int(nulls.sum())} of {len(df)} rows unexpected",
    )
    assert [o.risk for o in err.failed] == ["null-rate spike"]


def test_scores_outside_zero_one_never_reach_the_predictions_table(cfg, cdnow):
    ds = "1997-03-10"
    preds = predictions_frame(snapshot_frame(cdnow, ds), ds)
    preds.loc[[0, 5], "score"] = [1.7, -0.2]  # raw margins published as probabilities
    table = cfg.lake().table("predictions")
    with pytest.raises(DataQualityError) as info:
        table.write_partition(ds, preds, producer={"job": "score"}, gate=gate_for(cfg, "predictions"))
    assert_stopped(
        cfg,
        info.value,
        "predictions",
        "predictions",
        ds,
        "expect_column_values_to_be_between(column=score, min_value=0, max_value=1) [score outside [0, 1]]: 2 of",
        "1.7",
        "-0.2",
    )


def test_unknown_fingerprint_on_a_snapshot_keeps_the_good_version(cfg, cdnow):
    ds = "1997-03-03"
    table = cfg.lake().table(f"feature_snapshots/{FS.name}", feature_schema(FS))
    snap = snapshot_frame(cdnow, ds)
    good = table.write_partition(ds, snap, producer=snapshot_producer())
    with pytest.raises(DataQualityError) as info:  # a re-run by a stale deployment of the job
        table.write_partition(
            ds,
            snap,
            producer=snapshot_producer("customer_activity_v1:0123456789abcdef"),
            gate=gate_for(cfg, "feature_snapshots"),
        )
    err = info.value
    msg = str(err)
    assert "[unknown feature-set fingerprint]" in msg and "customer_activity_v1:0123456789abcdef" in msg
    assert [o.risk for o in err.failed] == ["unknown feature-set fingerprint"]
    assert os.path.isdir(err.quarantine_path) and os.path.isfile(err.report_path)
    assert table.manifest(ds).content_fingerprint == good.content_fingerprint  # readers keep the good one
    assert table.manifest(ds).producer["feature_set_fingerprint"] == FS.fingerprint
    (line,) = [a for a in alerts(cfg) if a["partition"] == f"{table.name}/ds={ds}"]
    assert line["quarantine"] == err.quarantine_path and line["dataset"] == "feature_snapshots"
    assert os.path.isfile(os.path.join(err.quarantine_path, "_validation.json"))


def test_unknown_fingerprint_in_serving_logs(cfg, cdnow):
    ds = "1997-03-04"
    table = cfg.repo().default_model().serving_log_table  # serving_logs/<model>: one table per served model
    assert table == "serving_logs/repurchase_90d"
    logs = serving_frame(cdnow, ds).to_pandas()
    logs.loc[logs.index[-4:], "feature_set_fingerprint"] = "customer_activity_v2:feedfacefeedface"
    land(
        cfg,
        ds,
        pa.Table.from_pandas(logs, schema=serving_frame(cdnow, ds).schema, preserve_index=False),
        table=table,
        producer={"job": "serving_log_publish"},
    )
    with pytest.raises(DataQualityError) as info:
        validate_partition(cfg, "serving_logs", ds)
    assert_stopped(
        cfg,
        info.value,
        "serving_logs",
        table,
        ds,
        "expect_column_values_to_be_in_set(column=feature_set_fingerprint",
        "4 of 60 rows",
        "customer_activity_v2:feedfacefeedface",
    )
