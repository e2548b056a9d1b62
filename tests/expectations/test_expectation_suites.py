"""The suites in expectations/: readable GE JSON, each expectation naming its risk, schemas equal to
the code's, feature checks derived from the spec (a new feature gets them), and each suite judging
small hand-built frames right."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from features import registry
from features.kernel import output_columns
from features.spec import Feature, FeatureSet, agg, count, ratio
from jobs.quality import derive, suites
from jobs.quality.suites import (
    DATASETS,
    SuiteError,
    expectations_dir,
    load_suite,
    source_bounds,
)
from jobs.quality.validate import validate_frame_batches
from jobs.schemas import feature_schema, raw_schema

FS = registry.get("customer_activity_v1")
RAW_EVENTS = raw_schema(FS.source)
DAY = pd.Timestamp("1997-05-05", tz="UTC")


def params(**extra):
    base = {
        "partition_start": DAY,
        "partition_end": DAY + pd.Timedelta(days=1),
        "previous_rows": 0,
        "data_start": pd.Timestamp("1997-01-01", tz="UTC"),
        "known_fingerprints": sorted(registry.known_fingerprints()),
        "validated_at": pd.Timestamp("2030-01-01", tz="UTC"),
    }
    base.update(extra)
    return base


def failed(result):
    return sorted(
        (o.type, o.kwargs.get("column") or o.kwargs.get("column_A"), o.unexpected_count) for o in result.failed
    )


# ---- the files -------------------------------------------------------------------------------
@pytest.mark.parametrize("dataset", DATASETS)
def test_suite_file_is_ge_json_and_every_expectation_names_its_risk(dataset):
    raw = json.loads((expectations_dir() / f"{dataset}.json").read_text())
    assert raw["name"] == dataset and raw["notes"]
    for e in raw["expectations"]:
        assert e["notes"].strip() and e["meta"]["risk"], e
    suite = load_suite(dataset)
    gx_suite = suite.to_gx()  # GE accepts every expectation (types and kwargs)
    assert len(gx_suite.expectations) == len(suite.expectations) >= len(raw["expectations"])
    assert all(e.notes and e.meta["risk"] for e in gx_suite.expectations)
    assert len({e["id"] for e in suite.expectations}) == len(suite.expectations)
    assert load_suite(dataset).expectations == suite.expectations  # ids are stable


def test_every_risk_the_issue_lists_is_guarded():
    risks = {e["meta"]["risk"] for d in DATASETS for e in load_suite(d).expectations}
    assert risks >= {
        "schema drift",
        "key nulls",
        "duplicate keys",
        "future timestamps",
        "timestamps before the data's start",
        "negative or absurd amounts",
        "null-rate spike",
        "row-count collapse",
        "feature outside its physical range",
        "score outside [0, 1]",
        "unknown feature-set fingerprint",
        "empty partition",
        "wrong timestamp unit or time zone",
        "corrupt or truncated partition",
    }


def test_raw_events_suite_schema_is_the_code_schema():
    exps = load_suite("raw_events").expectations
    columns = next(e for e in exps if e["type"] == "expect_table_columns_to_match_ordered_list")
    types = {
        e["kwargs"]["column"]: e["kwargs"]["type_"] for e in exps if e["type"] == "expect_column_values_to_be_of_type"
    }
    assert columns["kwargs"]["column_list"] == RAW_EVENTS.names
    assert types == {f.name: str(f.type) for f in RAW_EVENTS}


@pytest.mark.parametrize("dataset,query_columns", [("feature_snapshots", []), ("training_sets", [("label", "int8")])])
def test_feature_table_schemas_come_from_the_kernel(dataset, query_columns):
    exps = load_suite(dataset).expectations
    columns = next(e for e in exps if e["type"] == "expect_table_columns_to_match_ordered_list")
    types = [
        (e["kwargs"]["column"], e["kwargs"]["type_"]) for e in exps if e["type"] == "expect_column_values_to_be_of_type"
    ]
    assert types == [
        (c, t if not t.startswith("timestamp") else "timestamp[us, tz=UTC]")
        for c, t in output_columns(FS, query_columns)
    ]
    assert columns["kwargs"]["column_list"] == feature_schema(FS, query_columns).names


def test_serving_log_suite_lists_the_serving_log_schema():
    log = pytest.importorskip("jobs.serving.log")
    exps = load_suite("serving_logs").expectations
    columns = next(e for e in exps if e["type"] == "expect_table_columns_to_match_ordered_list")
    assert columns["kwargs"]["column_list"] == log.log_schema(FS).names


def test_placeholders_are_bound_to_the_feature_set():
    snap = load_suite("feature_snapshots")
    assert snap.table == f"feature_snapshots/{FS.name}" and snap.name == f"feature_snapshots.{FS.name}"
    text = json.dumps(snap.to_json_dict()["expectations"])
    assert "${" not in text and '"column": "customer_id"' in text
    assert load_suite("raw_events").feature_set is None
    assert load_suite("predictions").table == "predictions"


# ---- derived from the feature spec -----------------------------------------------------------
def test_a_new_feature_gets_checks_without_editing_any_suite():
    new = FeatureSet(
        name="probe_v1",
        entity="customer_id",
        features=(
            count("n_3d", 3),
            count("n_10d", 10),
            agg("avg_amount_10d", "mean", "amount", 10),
            agg("items_10d", "sum", "n_items", 10),
            Feature("recency_30d", "days_since_last", window_days=30),
            Feature("tenure_30d", "days_since_first", window_days=30),
            ratio("share_3_10", "n_3d", "n_10d"),
            ratio("amount_per_item", "avg_amount_10d", "items_10d"),
        ),
    )
    exps = derive.derived_expectations(
        new, {"schema": {"query_columns": []}, "features": {"ranges": True, "not_null": True}}, source_bounds()
    )
    between = {
        e["kwargs"]["column"]: (e["kwargs"].get("min_value"), e["kwargs"].get("max_value"))
        for e in exps
        if e["type"] == "expect_column_values_to_be_between"
    }
    assert between == {
        "n_3d": (0, None),
        "n_10d": (0, None),
        "avg_amount_10d": (0, 50000),
        "items_10d": (0, None),
        "recency_30d": (0, 30),
        "tenure_30d": (0, 30),
        "share_3_10": (0, 1),
        "amount_per_item": (0, None),
    }
    pairs = {
        (e["kwargs"]["column_A"], e["kwargs"]["column_B"])
        for e in exps
        if e["type"] == "expect_column_pair_values_a_to_be_greater_than_b"
    }
    assert pairs == {("n_10d", "n_3d"), ("tenure_30d", "recency_30d")}
    not_null = {e["kwargs"]["column"] for e in exps if e["type"] == "expect_column_values_to_not_be_null"}
    assert not_null == {"n_3d", "n_10d", "items_10d"}
    types = {
        e["kwargs"]["column"]: e["kwargs"]["type_"] for e in exps if e["type"] == "expect_column_values_to_be_of_type"
    }
    assert types["n_3d"] == "int64" and types["share_3_10"] == "double"
    assert all(e["notes"] and e["meta"]["risk"] and "probe_v1" in e["meta"]["derived_from"] for e in exps)


def test_customer_activity_ranges():
    b = derive.bounds(FS, source_bounds())
    assert b["txn_count_7d"] == (0, float("inf")) and b["spend_sum_30d"] == (0, float("inf"))
    assert b["spend_mean_90d"] == (0, 50000) and b["spend_max_90d"] == (0, 50000)
    assert b["recency_days"] == (0, float("inf")) and b["activity_trend_30_90"] == (0, 1)
    assert b["price_per_item_365d"] == (0, float("inf"))
    # customer_id: Key.min (issue 15)
    assert source_bounds() == {"amount": (0, 50000), "n_items": (0, 1000), "customer_id": (1, None)}


# ---- suites on hand-built frames -------------------------------------------------------------
def snapshot_rows(n=6):
    rows = {
        "customer_id": np.arange(1, n + 1, dtype="int64"),
        "as_of": pd.Series([DAY + pd.Timedelta(days=1)] * n).astype("datetime64[us, UTC]"),
    }
    for f in FS.features:
        if f.is_integer:
            rows[f.name] = np.arange(n, dtype="int64") + (f.window_days or 400) // 7
        elif f.agg == "ratio":
            rows[f.name] = np.full(n, 0.5)
        elif f.agg in ("days_since_last", "days_since_first"):
            rows[f.name] = np.full(n, 3.0 if f.agg == "days_since_last" else 40.0)
        else:
            rows[f.name] = np.full(n, 10.0) * (1 + (f.window_days or 400) / 7 if f.agg == "sum" else 1)
    return pd.DataFrame(rows)


def validate_snapshot(df, **extra):
    return validate_frame_batches(
        "feature_snapshots",
        [df],
        schema=feature_schema(FS),
        params=params(**extra),
        manifest={"producer": {"feature_set_fingerprint": FS.fingerprint}},
    )


def test_snapshot_suite_accepts_a_plausible_snapshot_and_catches_physical_impossibilities():
    assert validate_snapshot(snapshot_rows()).success
    bad = snapshot_rows()
    bad.loc[0, "txn_count_30d"] = -1  # a negative count
    bad.loc[1, "recency_days"] = -0.5  # an event in the future
    bad.loc[2, "activity_trend_30_90"] = 1.5  # 30-day share above 1
    bad.loc[3, "txn_count_90d"] = 0  # fewer than the 30-day count
    bad.loc[4, "spend_sum_7d"] = np.nan  # a sum is never null
    bad.loc[5, "spend_max_90d"] = np.inf
    bad["as_of"] = bad["as_of"] + pd.Timedelta(hours=1)  # not the snapshot's cut-off
    result = validate_snapshot(bad, previous_rows=10)  # and fewer entities than yesterday
    assert failed(result) == sorted(
        [
            ("expect_column_values_to_be_between", "txn_count_30d", 1),
            ("expect_column_values_to_be_between", "recency_days", 1),
            ("expect_column_values_to_be_between", "activity_trend_30_90", 1),
            ("expect_column_pair_values_a_to_be_greater_than_b", "txn_count_30d", 1),  # -1 < 7-day count
            ("expect_column_pair_values_a_to_be_greater_than_b", "txn_count_90d", 1),
            ("expect_column_values_to_not_be_null", "spend_sum_7d", 1),
            ("expect_column_pair_values_a_to_be_greater_than_b", "spend_sum_30d", 1),  # null vs 30d
            ("expect_column_values_to_be_between", "spend_max_90d", 1),
            ("expect_column_values_to_be_between", "as_of", 6),
            ("expect_table_row_count_to_be_between", None, None),
        ]
    )
    assert {
        o.risk
        for o in result.failed
        if o.kwargs.get("column") == "as_of" or o.type == "expect_table_row_count_to_be_between"
    } == {"row-count collapse", "timestamps in the future"}


def training_rows(labels=(0, 1, 1, 0)):
    snap = snapshot_rows(len(labels)).drop(columns=["as_of"])
    snap.insert(1, "as_of", pd.Series([DAY] * len(labels)).astype("datetime64[us, UTC]"))
    snap.insert(2, "label", np.asarray(labels, dtype="int8"))
    return snap


def validate_training(df):
    return validate_frame_batches(
        "training_sets",
        [df],
        schema=feature_schema(FS, [("label", "int8")]),
        params=params(),
        manifest={"producer": {"feature_set_fingerprint": FS.fingerprint}},
    )


def test_training_set_suite():
    assert validate_training(training_rows()).success
    assert [o.risk for o in validate_training(training_rows((0, 0, 0, 0))).failed] == ["degenerate labels"]
    bad = pd.concat([training_rows((0, 2, 1, 0)), training_rows().iloc[[0]]], ignore_index=True)
    bad["as_of"] = bad["as_of"] + pd.Timedelta(days=1)  # features computed after the cut-off
    result = validate_training(bad)
    assert failed(result) == sorted(
        [
            ("expect_column_values_to_be_in_set", "label", 1),
            ("expect_compound_columns_to_be_unique", None, 2),
            ("expect_column_values_to_be_between", "as_of", 5),
        ]
    )
    assert next(o for o in result.failed if o.kwargs.get("column") == "as_of").risk == "leakage"


def prediction_rows(n=5):
    return pd.DataFrame(
        {
            "customer_id": np.arange(n, dtype="int64"),
            "score": np.linspace(0, 1, n),
            "model_name": "m",
            "model_version": 1,
            "role": "champion",
            "feature_set_fingerprint": FS.fingerprint,
            "scored_at": DAY + pd.Timedelta(days=1, minutes=5),
        }
    )


def test_predictions_suite():
    assert validate_frame_batches("predictions", [prediction_rows()], params=params()).success
    bad = prediction_rows()
    bad.loc[1, "score"] = 1.0000001
    bad.loc[2, "feature_set_fingerprint"] = "customer_activity_v1:0000000000000000"
    bad.loc[3, "scored_at"] = DAY  # scored before the snapshot's as_of existed
    bad.loc[4, "role"] = "shadow"
    assert failed(validate_frame_batches("predictions", [bad], params=params())) == sorted(
        [
            ("expect_column_values_to_be_between", "score", 1),
            ("expect_column_values_to_be_in_set", "feature_set_fingerprint", 1),
            ("expect_column_values_to_be_in_set", "role", 1),
            ("expect_column_values_to_be_between", "scored_at", 1),
        ]
    )
    both = pd.concat([prediction_rows(), prediction_rows().assign(role="challenger", model_version=2)])
    assert validate_frame_batches("predictions", [both], params=params()).success  # shadow mode
    renamed = prediction_rows().rename(columns={"score": "scores"})
    result = validate_frame_batches("predictions", [renamed], params=params())
    schema = next(o for o in result.failed if o.type == "expect_table_columns_to_match_set")
    assert schema.details == {"missing": ["score"], "unexpected": ["scores"]}


def serving_rows(n=4):
    t = DAY + pd.to_timedelta(np.arange(n) * 3600, unit="s")
    df = pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(n)],
            "entity_id": np.arange(n, dtype="int64"),
            "request_time": t,
            "served_at": t + pd.Timedelta(milliseconds=2),
            "mode": "fresh",
            "feature_set": FS.name,
            "feature_set_fingerprint": FS.fingerprint,
            "model_name": "m",
            "model_version": "1",
            "score": 0.25,
            "latency_ms": 2.0,
            "degraded": False,
            "degraded_reason": None,
            "snapshot_ds": None,
            "arm": "champion",
            "shadow_version": None,
            "shadow_score": None,
        }
    )
    feats = snapshot_rows(n).drop(columns=["customer_id", "as_of"])
    return pd.concat([df, feats], axis=1)


def serving_schema():
    base = [
        ("request_id", pa.string()),
        ("entity_id", pa.int64()),
        ("request_time", pa.timestamp("us", "UTC")),
        ("served_at", pa.timestamp("us", "UTC")),
        ("mode", pa.string()),
        ("feature_set", pa.string()),
        ("feature_set_fingerprint", pa.string()),
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("score", pa.float64()),
        ("latency_ms", pa.float64()),
        ("degraded", pa.bool_()),
        ("degraded_reason", pa.string()),
        ("snapshot_ds", pa.string()),
        ("arm", pa.string()),
        ("shadow_version", pa.string()),
        ("shadow_score", pa.float64()),
    ]
    return pa.schema(base + [(f.name, pa.int64() if f.is_integer else pa.float64()) for f in FS.features])


def test_serving_log_suite():
    ok = validate_frame_batches("serving_logs", [serving_rows()], schema=serving_schema(), params=params())
    assert ok.success, ok.describe()
    bad = serving_rows()
    bad.loc[0, "request_id"] = "r1"  # logged twice
    bad.loc[1, "request_time"] = DAY - pd.Timedelta(minutes=1)  # yesterday's request
    bad.loc[2, "mode"] = "cached"
    bad.loc[3, "txn_count_7d"] = -2
    assert failed(validate_frame_batches("serving_logs", [bad], schema=serving_schema(), params=params())) == sorted(
        [
            ("expect_column_values_to_be_unique", "request_id", 2),
            ("expect_column_values_to_be_between", "request_time", 1),
            ("expect_column_values_to_be_in_set", "mode", 1),
            ("expect_column_values_to_be_between", "txn_count_7d", 1),
        ]
    )


def test_row_count_parameter_is_an_expression_over_the_previous_partition():
    e = next(e for e in load_suite("raw_events").expectations if e["meta"]["risk"] == "row-count collapse")
    assert e["kwargs"]["min_value"] == {"$PARAMETER": "previous_rows * 0.2"}
    assert suites.resolve(e, {"previous_rows": 250})[0]["kwargs"]["min_value"] == pytest.approx(50.0)
    assert suites.resolve(e, {})[1] == ["previous_rows"]


# ---- a suite that cannot be evaluated in batches is refused ------------------------------------
def test_a_table_level_expectation_that_cannot_be_combined_is_refused(tmp_path, monkeypatch):
    for d in DATASETS:
        (tmp_path / f"{d}.json").write_text((expectations_dir() / f"{d}.json").read_text())
    raw = json.loads((tmp_path / "raw_events.json").read_text())
    raw["expectations"].append(
        {
            "type": "expect_column_median_to_be_between",
            "kwargs": {"column": "amount", "min_value": 1},
            "notes": "x",
            "meta": {"risk": "negative or absurd amounts"},
        }
    )
    (tmp_path / "raw_events.json").write_text(json.dumps(raw))
    monkeypatch.setenv("LOCKSTEP_EXPECTATIONS_DIR", str(tmp_path))
    suites.clear_cache()
    try:
        with pytest.raises(SuiteError, match="expect_column_median_to_be_between.*not combined"):
            load_suite("raw_events")
        raw["expectations"][-1] = {
            "type": "expect_column_values_to_be_between",
            "kwargs": {"column": "amount"},
            "notes": "",
            "meta": {},
        }
        (tmp_path / "raw_events.json").write_text(json.dumps(raw))
        suites.clear_cache()
        with pytest.raises(SuiteError, match="needs 'notes' and meta.risk"):
            load_suite("raw_events")
    finally:
        suites.clear_cache()
