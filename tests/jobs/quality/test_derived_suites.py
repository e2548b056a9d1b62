"""Suites derived from the declarations: a source, set or model declared here gets its checks
without anyone writing them, and they catch what the declaration forbids."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from features.model import Condition, Join, Model, OutcomeLabel, QueryRows
from features.source import Column, FileLander, Key, Source, hours
from features.spec import FeatureSet, agg, count
from jobs.config import Config
from jobs.quality.suites import expectations_dir, load_suite
from jobs.quality.validate import validate_frame_batches, validate_partition
from jobs.schemas import raw_schema, to_raw

DAY = pd.Timestamp("2024-05-01", tz="UTC")
CLICKS = Source(
    name="clicks",
    keys=(Key("user", "int64", min=1),),
    columns=(
        Column("page", "string", allowed=("home", "cart", "pay"), nullable=False),
        Column("ms", "double", min=0, max=60_000, mean=(10, 5_000), not_null_share=0.5),
        Column("token", "string", unique=True),
    ),
    lander=FileLander("csv", "clicks/{ds}.csv"),
    min_rows=3,
    min_share_of_previous=0.5,
)
ORDERS = Source(
    name="orders_t",
    keys=(Key("shop", "string"), Key("courier", "string")),
    columns=(
        Column("due_ts", "timestamp[us, tz=UTC]", nullable=False),
        Column("minutes_late", "double", min=0),
    ),
    lander=FileLander("csv", "o/{ds}.csv"),
    event_id="order_id",
    event_id_type="string",
)
SHOP = FeatureSet("shop_t_v1", source=ORDERS, key="shop", features=(count("shop_n_6h", hours(6)),))
COURIER = FeatureSet(
    "courier_t_v1",
    source=ORDERS,
    key="courier",
    features=(count("courier_n_1h", hours(1)), agg("courier_late_1h", "mean", "minutes_late", hours(1))),
)
LATE = Model(
    name="late_t",
    queries=QueryRows(ORDERS, time="due_ts", offset_hours=-1),
    label=OutcomeLabel((Condition("minutes_late", ">=", 15),)),
    joins=(Join(SHOP), Join(COURIER, key="courier")),
)


def clicks(n=6, **changes) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "event_id": np.arange(1, n + 1, dtype=np.int64),
            "user": np.arange(1, n + 1, dtype=np.int64),
            "event_ts": pd.Series([DAY + pd.Timedelta(hours=h) for h in range(n)]).astype("datetime64[us, UTC]"),
            "page": ["home", "cart", "pay"] * (n // 3),
            "ms": np.full(n, 100.0),
            "token": [f"t{i}" for i in range(n)],
        }
    )
    df["ingested_at"] = df["event_ts"] + pd.Timedelta(minutes=5)
    for k, v in changes.items():
        df[k] = v
    return to_raw(CLICKS, df).to_pandas()


def params(**extra):
    base = {
        "partition_start": DAY,
        "partition_end": DAY + pd.Timedelta(days=1),
        "data_start": DAY,
        "previous_rows": 0,
        "manifest_rows": None,
    }
    base.update(extra)
    return base


def run(df, **extra):
    suite = load_suite("raw_events", source=CLICKS)
    return validate_frame_batches(suite, [df], schema=raw_schema(CLICKS), params=params(**extra))


def failed(result) -> list[tuple[str, str | None]]:
    return sorted((o.type, o.kwargs.get("column")) for o in result.failed)


def test_a_new_source_gets_its_whole_suite_from_the_declaration():
    suite = load_suite("raw_events", source=CLICKS)
    assert suite.name == "raw_events.clicks" and suite.table == "raw_events/clicks" and suite.source == "clicks"
    exps = suite.expectations
    columns = next(e for e in exps if e["type"] == "expect_table_columns_to_match_ordered_list")
    assert columns["kwargs"]["column_list"] == raw_schema(CLICKS).names
    types = {
        e["kwargs"]["column"]: e["kwargs"]["type_"] for e in exps if e["type"] == "expect_column_values_to_be_of_type"
    }
    assert types == {
        "event_id": "int64",
        "user": "int64",
        "event_ts": "timestamp[us, tz=UTC]",
        "ingested_at": "timestamp[us, tz=UTC]",
        "page": "string",
        "ms": "double",
        "token": "string",
    }
    by = {(e["type"], e["kwargs"].get("column")): e["kwargs"] for e in exps}
    assert by[("expect_column_values_to_be_between", "user")] == {"column": "user", "min_value": 1}
    assert by[("expect_column_values_to_be_in_set", "page")]["value_set"] == ["home", "cart", "pay"]
    assert by[("expect_column_mean_to_be_between", "ms")] == {"column": "ms", "min_value": 10, "max_value": 5000}
    assert by[("expect_column_values_to_not_be_null", "ms")] == {"column": "ms", "mostly": 0.5}
    assert ("expect_column_values_to_be_unique", "token") in by
    rows = [e["kwargs"] for e in exps if e["type"] == "expect_table_row_count_to_be_between"]
    assert rows == [
        {"min_value": 3},
        {"min_value": {"$PARAMETER": "previous_rows * 0.5"}},
        {"max_value": {"$PARAMETER": "recent_median_rows * 3"}},  # the default ceiling (issue 15 item 2)
    ]
    (twice,) = [e for e in exps if e["type"] == "expect_compound_columns_to_be_unique"]
    assert twice["kwargs"] == {"column_list": ["user", "event_ts", "page", "ms", "token"], "mostly": 0.5}
    (reused,) = [e for e in exps if e["type"] == "expect_column_values_to_not_be_in_set"]
    assert reused["kwargs"] == {"column": "event_id", "value_set": {"$PARAMETER": "event_ids_reused"}}
    assert reused["meta"]["content"] == ["user", "event_ts", "page", "ms", "token"]
    unique_id = next(
        e for e in exps if e["type"] == "expect_column_values_to_be_unique" and e["kwargs"]["column"] == "event_id"
    )
    assert unique_id["meta"]["ignore_identical_rows_on"] == ["event_id", "user", "event_ts", "page", "ms", "token"]
    not_null = {
        e["kwargs"]["column"]
        for e in exps
        if e["type"] == "expect_column_values_to_not_be_null" and "mostly" not in e["kwargs"]
    }
    assert not_null == {"event_id", "user", "event_ts", "ingested_at", "page"}
    # the generic partition-time rules, bound to the source's time columns
    pair = next(e for e in exps if e["type"] == "expect_column_pair_values_a_to_be_greater_than_b")
    assert (pair["kwargs"]["column_A"], pair["kwargs"]["column_B"]) == ("ingested_at", "event_ts")
    assert all(e["notes"] and e["meta"]["risk"] for e in exps)


def test_the_template_names_no_cdnow_column():
    text = (expectations_dir() / "raw_events.json").read_text()
    for word in ("customer_id", "n_items", '"amount"', '"category"'):
        assert word not in text


def test_a_clean_partition_passes():
    r = run(clicks())
    assert r.success, r.describe()


@pytest.mark.bad_input("validation: a key outside its domain")
def test_a_key_below_key_min_is_caught():
    r = run(clicks(user=np.array([1, 2, 0, 4, -7, 6], dtype=np.int64)))
    assert failed(r) == [("expect_column_values_to_be_between", "user")]
    assert r.failed[0].unexpected_count == 2 and r.failed[0].risk == "key outside its domain"


@pytest.mark.bad_input("validation: an unknown category")
def test_a_category_outside_allowed_is_caught():
    r = run(clicks(page=["home", "cart", "pay", "home", "refund", "cart"]))
    assert failed(r) == [("expect_column_values_to_be_in_set", "page")]
    o = r.failed[0]
    assert o.unexpected_count == 1 and "refund" in json.dumps(o.to_json_dict(), default=str)
    assert o.risk == "unknown category"


@pytest.mark.bad_input("validation: a value outside its declared range")
@pytest.mark.bad_input("validation: a duplicated unique value")
@pytest.mark.bad_input("validation: nulls in a not-null column")
@pytest.mark.bad_input("validation: a shifted mean")
@pytest.mark.bad_input("validation: a row-count drop")
def test_ranges_means_null_shares_uniqueness_and_row_counts_are_caught():
    r = run(clicks(ms=[100.0, -1.0, np.nan, np.nan, np.nan, np.nan], token=["a", "a", "b", "c", "d", "e"]))
    assert failed(r) == [
        ("expect_column_values_to_be_between", "ms"),
        ("expect_column_values_to_be_unique", "token"),
        ("expect_column_values_to_not_be_null", "ms"),
    ]
    r = run(clicks(ms=np.full(6, 59_000.0)))
    assert failed(r) == [("expect_column_mean_to_be_between", "ms")]
    r = run(clicks(n=3), previous_rows=10)
    assert failed(r) == [("expect_table_row_count_to_be_between", None)]
    r = run(clicks(n=3).iloc[:2])
    assert failed(r) == [("expect_table_row_count_to_be_between", None)]


@pytest.mark.bad_input("validation: a row outside its ingest day, or ingested before it happened")
def test_partition_time_rules_hold_for_any_source():
    late = clicks()
    late.loc[0, "ingested_at"] = DAY + pd.Timedelta(days=1, hours=1)  # outside its ingest day
    late.loc[1, "event_ts"] = late.loc[1, "ingested_at"] + pd.Timedelta(seconds=1)  # arrived before it happened
    r = run(late)
    assert ("expect_column_pair_values_a_to_be_greater_than_b", None) in failed(r)
    assert ("expect_column_values_to_be_between", "ingested_at") in failed(r)


def test_validate_partition_takes_the_source_by_declaration(tmp_path):
    cfg = Config(lake_root=str(tmp_path / "lake"))
    cfg.lake().table(CLICKS.table, raw_schema(CLICKS)).write_partition(
        DAY.date().isoformat(), to_raw(CLICKS, clicks(user=np.array([1, 2, 3, 0, 5, 6]))), producer={"job": "t"}
    )
    r = validate_partition(
        cfg, "raw_events", DAY.date().isoformat(), source=CLICKS, alert=False, raise_on_failure=False
    )
    assert not r.success and failed(r) == [("expect_column_values_to_be_between", "user")]
    assert r.table == "raw_events/clicks" and r.quarantine_path and "raw_events/clicks" in r.quarantine_path


# ---- model suites --------------------------------------------------------------------------------------
def test_training_set_suite_of_a_two_set_string_keyed_model():
    suite = load_suite("training_sets", model=LATE)
    assert suite.name == "training_sets.late_t" and suite.table == "training_sets/late_t" and suite.model == "late_t"
    exps = suite.expectations
    columns = next(e for e in exps if e["type"] == "expect_table_columns_to_match_ordered_list")
    assert columns["kwargs"]["column_list"] == [
        "order_id",
        "shop",
        "courier",
        "as_of",
        "label",
        "shop_n_6h",
        "courier_n_1h",
        "courier_late_1h",
    ]
    types = {
        e["kwargs"]["column"]: e["kwargs"]["type_"] for e in exps if e["type"] == "expect_column_values_to_be_of_type"
    }
    assert types["order_id"] == types["shop"] == types["courier"] == "string" and types["label"] == "int8"
    unique = next(e for e in exps if e["type"] == "expect_compound_columns_to_be_unique")
    assert unique["kwargs"]["column_list"] == ["order_id", "shop", "courier", "as_of"]
    between = {e["kwargs"]["column"]: e["kwargs"] for e in exps if e["type"] == "expect_column_values_to_be_between"}
    assert between["courier_late_1h"]["min_value"] == 0 and between["shop_n_6h"]["min_value"] == 0
    text = json.dumps(suite.to_json_dict())
    assert "${" not in text and "customer_id" not in text


def test_predictions_and_serving_log_suites_of_a_model():
    pred = load_suite("predictions", model=LATE)
    assert pred.table == "predictions/late_t"
    cols = next(e for e in pred.expectations if e["type"] == "expect_table_columns_to_match_set")
    assert cols["kwargs"]["column_set"][:3] == ["order_id", "shop", "courier"]
    types = {
        e["kwargs"]["column"]: e["kwargs"]["type_"]
        for e in pred.expectations
        if e["type"] == "expect_column_values_to_be_of_type"
    }
    assert types["order_id"] == "string" and types["scored_at"] == "timestamp[us, tz=UTC]"
    logs = load_suite("serving_logs", model=LATE)
    cols = next(e for e in logs.expectations if e["type"] == "expect_table_columns_to_match_ordered_list")
    assert cols["kwargs"]["column_list"][:4] == ["request_id", "shop", "courier", "request_time"]
    assert cols["kwargs"]["column_list"][-3:] == ["shop_n_6h", "courier_n_1h", "courier_late_1h"]


def test_serving_log_keys_follow_the_serving_log_schema():
    log = pytest.importorskip("jobs.serving.log")
    from jobs.quality import derive

    for model in (LATE, load_suite("serving_logs").model):
        m = model if isinstance(model, Model) else None
        if m is None:
            from features import repo

            m = repo.load().model(model)
        assert derive.log_keys(m) == log.log_keys(m)
        cols = next(
            e
            for e in load_suite("serving_logs", model=m).expectations
            if e["type"] == "expect_table_columns_to_match_ordered_list"
        )
        assert cols["kwargs"]["column_list"] == log.log_schema(m).names


TRIPS = Source(
    name="trips_t",
    keys=(Key("car", "int64", min=1),),
    columns=(
        Column("cancelled", "int64", nullable=False, min=0, max=1),
        Column("delay", "double", null_when="cancelled == 1"),
    ),
    lander=FileLander("csv", "t/{ds}.csv"),
    max_duplicate_share=None,
)


def trips(cancelled, delay) -> pd.DataFrame:
    n = len(cancelled)
    df = pd.DataFrame(
        {
            "event_id": np.arange(1, n + 1, dtype=np.int64),
            "car": np.arange(1, n + 1, dtype=np.int64),
            "event_ts": pd.Series([DAY + pd.Timedelta(hours=h) for h in range(n)]).astype("datetime64[us, UTC]"),
            "cancelled": np.asarray(cancelled, dtype=np.int64),
            "delay": np.asarray(delay, dtype=float),
        }
    )
    df["ingested_at"] = df["event_ts"] + pd.Timedelta(minutes=5)
    return to_raw(TRIPS, df).to_pandas()


def run_trips(df):
    suite = load_suite("raw_events", source=TRIPS)
    return validate_frame_batches(suite, [df], schema=raw_schema(TRIPS), params=params())


def test_null_when_ties_a_column_s_nulls_to_a_condition_whatever_their_share():
    # a storm: 4 of 6 cancelled, each without a delay — no share floor, so this is clean
    r = run_trips(trips([1, 1, 1, 1, 0, 0], [np.nan, np.nan, np.nan, np.nan, 3.0, -2.0]))
    assert r.success, r.describe()
    # a flight that departed but lost its delay (a feed dropping values)
    r = run_trips(trips([1, 0, 0, 0, 0, 0], [np.nan, 1.0, np.nan, 2.0, 3.0, 4.0]))
    assert failed(r) == [("expect_column_values_to_not_be_null", "delay")]
    assert r.failed[0].unexpected_count == 1 and r.failed[0].element_count == 5
    assert "cancelled == 1" in r.failed[0].notes
    # a cancelled flight with a delay nobody measured
    r = run_trips(trips([1, 1, 0, 0, 0, 0], [7.0, np.nan, 1.0, 2.0, 3.0, 4.0]))
    assert failed(r) == [("expect_column_values_to_be_null", "delay")]
    assert r.failed[0].unexpected_count == 1 and r.failed[0].element_count == 2


def test_a_null_when_over_an_unknown_column_is_refused_at_declaration():
    from features.source import DeclarationError

    with pytest.raises(DeclarationError, match=r"null_when 'canceled == 1'.*canceled"):
        Source(
            name="trips_bad",
            keys=(Key("car", "int64"),),
            columns=(
                Column("cancelled", "int64", nullable=False),
                Column("delay", "double", null_when="canceled == 1"),
            ),
            lander=FileLander("csv", "t/{ds}.csv"),
        )
    with pytest.raises(DeclarationError, match="null_when needs a nullable column"):
        Source(
            name="trips_bad2",
            keys=(Key("car", "int64"),),
            columns=(
                Column("cancelled", "int64", nullable=False),
                Column("delay", "double", nullable=False, null_when="cancelled == 1"),
            ),
            lander=FileLander("csv", "t/{ds}.csv"),
        )
