"""The pure glue the DAG tasks use (jobs/orchestration.py)."""

from __future__ import annotations

import datetime as dt
import sys
import types

import pytest

from jobs import orchestration as o

REPO = o.repo()
MODEL = REPO.model("repurchase_90d")  # the CDNOW example: weekly Monday cut-offs, a 90-day label


def test_constants_match_the_jobs_they_mirror():
    from jobs.config import ENGINES
    from jobs.training.lgbm import BACKENDS

    assert o.ENGINES == ENGINES and o.BACKENDS == BACKENDS


@pytest.mark.parametrize(
    "value, expected",
    [
        ("1997-03-05", "1997-03-05"),
        ("1997-03-05T00:00:00+00:00", "1997-03-05"),
        (dt.date(1997, 3, 5), "1997-03-05"),
        (dt.datetime(1997, 3, 5, 23, 0, tzinfo=dt.timezone(dt.timedelta(hours=-5))), "1997-03-06"),
    ],
)
def test_parse_ds(value, expected):
    assert o.parse_ds(value) == expected


@pytest.mark.parametrize("bad", [None, "", "yesterday"])
def test_partition_requires_a_logical_date(bad):
    with pytest.raises(ValueError):
        o.partition(bad)


def test_asset_uri_is_logical_and_rejects_paths():
    assert o.asset_uri("feature_snapshots/customer_activity_v1") == "lockstep://feature_snapshots/customer_activity_v1"
    for bad in ("", "/etc", "a/../b", "s3://bucket/x"):
        with pytest.raises(ValueError):
            o.asset_uri(bad)


def test_engine_param_schema_lists_every_engine_and_null():
    assert o.engine_param_schema()["enum"] == [None, "local", "dask", "spark"]


def test_config_takes_the_engine_param_over_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LOCKSTEP_LAKE", str(tmp_path))
    monkeypatch.setenv("LOCKSTEP_ENGINE", "dask")
    assert o.config(None).engine == "dask" and o.config("spark").engine == "spark"
    assert o.config().lake_root == str(tmp_path)
    with pytest.raises(ValueError, match="flink"):
        o.config("flink")


def test_partitions_to_score_from_param_or_asset_events():
    Event = types.SimpleNamespace
    events = {
        "snap": [
            Event(extra={"ds": "1997-01-03"}),
            Event(extra={"ds": "1997-01-02"}),
            Event(extra={"ds": "1997-01-03"}),
        ]
    }
    assert o.partitions_to_score(None, events) == ["1997-01-02", "1997-01-03"]
    assert o.partitions_to_score("1997-02-01", events) == ["1997-02-01"]
    with pytest.raises(ValueError, match="no partition"):
        o.partitions_to_score(None, {"snap": [Event(extra={})]})


def test_training_window_defaults_end_at_the_last_mature_monday():
    w = o.training_window(MODEL, {}, logical_date="1998-06-29", latest_mature="1998-03-30")
    assert w["holdback"] == ["1998-03-16", "1998-03-30"]
    assert w["valid"] == ["1998-02-23", "1998-03-09"]
    gap = dt.date.fromisoformat(w["valid"][0]) - dt.date.fromisoformat(w["train"][1])
    assert gap.days >= 90  # the embargo: training labels never see the validation period
    assert w["embargo_days"] == 90
    r = MODEL.ranges
    assert len(w["cutoffs"]) == r.train_weeks + r.valid_weeks + r.holdback_weeks == 14
    assert all(dt.date.fromisoformat(c).weekday() == 0 for c in w["cutoffs"])
    # A scheduled run sees no label younger than its horizon, whatever the lake holds.
    early = o.training_window(MODEL, {}, logical_date="1998-01-05", latest_mature="1998-03-30")
    assert early["holdback"][1] <= "1997-10-07"


def test_training_window_explicit_params_win_and_bad_ones_fail():
    w = o.training_window(
        MODEL,
        {
            "train_from": "1997-06-02",
            "train_to": "1997-06-16",
            "valid_from": "1997-06-23",
            "valid_to": "1997-06-23",
            "holdback_from": "1997-06-30",
            "holdback_to": "1997-06-30",
            "embargo_days": 0,
        },
    )
    assert w["cutoffs"] == ["1997-06-02", "1997-06-09", "1997-06-16", "1997-06-23", "1997-06-30"]
    with pytest.raises(ValueError, match="bad training window"):
        o.training_window(MODEL, {"valid_from": "1997-06-23", "valid_to": "1997-06-16", "holdback_to": "1997-06-30"})
    with pytest.raises(ValueError, match="no mature labels of model 'repurchase_90d'"):
        o.training_window(MODEL, {})


def test_default_args_put_every_task_in_the_pool_with_bounded_retries():
    cb = object()
    args = o.default_args(on_failure_callback=cb)
    assert args["pool"] == o.POOL and args["on_failure_callback"] is cb
    assert 1 <= args["retries"] <= 3 and args["retry_delay"] >= dt.timedelta(seconds=10)


def test_data_quality_failures_fail_fast_other_errors_do_not():
    from airflow.sdk.exceptions import AirflowFailException

    from jobs.quality.validate import DataQualityError

    class FakeDQ(DataQualityError):
        def __init__(self):
            Exception.__init__(self, "3 rows with amount > 50000")

        def __str__(self):
            return "3 rows with amount > 50000"

    with pytest.raises(AirflowFailException, match="amount > 50000"), o.data_quality_gate():
        raise FakeDQ()
    with pytest.raises(OSError), o.data_quality_gate():
        raise OSError("disk hiccup: retried by Airflow")
    from jobs.lake import UnvalidatedPartitionError  # an input nobody validated: retrying cannot help

    with pytest.raises(
        AirflowFailException, match=r"unvalidated input: table 'raw_events/x' ds=2024-01-01\.\.2024-01-02"
    ):
        with o.data_quality_gate():
            raise UnvalidatedPartitionError("raw_events/x", ["2024-01-01", "2024-01-02"], "raw_events")


def test_orchestration_imports_nothing_heavy():
    # DAG files import it at parse time.
    code = (
        "import sys; import jobs.orchestration; "
        "print([m for m in ('pandas','pyarrow','jobs.lake','jobs.config') if m in sys.modules])"
    )
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_serving_wal_dir_param_then_environment_then_the_services_default():
    from jobs.serving.app import Settings

    assert o.DEFAULT_SERVING_WAL_DIR == Settings().wal_dir
    env = {o.SERVING_WAL_ENV: "/srv/wal"}
    assert o.serving_wal_dir("/tmp/wal", env) == "/tmp/wal"
    assert o.serving_wal_dir(None, env) == "/srv/wal" and o.serving_wal_dir("", env) == "/srv/wal"
    assert o.serving_wal_dir(None, {}) == o.DEFAULT_SERVING_WAL_DIR


def test_serving_log_action_is_idempotent_and_never_drops_logged_records():
    assert o.serving_log_action("1997-02-10", ["a", "b"], None) == "publish"
    assert o.serving_log_action("1997-02-10", [], None) == "empty"
    assert o.serving_log_action("1997-02-10", ["a", "b"], ["a", "b"]) == "keep"  # a re-run: nothing new
    assert o.serving_log_action("1997-02-10", [], ["a"]) == "keep"  # WAL pruned after publishing
    assert o.serving_log_action("1997-02-10", ["a", "b", "c"], ["a", "b"]) == "publish"  # late records
    with pytest.raises(ValueError, match="pruned"):
        o.serving_log_action("1997-02-10", ["a", "c"], ["a", "b"])


def test_skew_breaches_fail_fast_other_errors_do_not():
    from airflow.sdk.exceptions import AirflowFailException

    from jobs.skew.job import SkewThresholdError

    with pytest.raises(AirflowFailException, match="logic_skew_rate"), o.skew_gate():
        raise SkewThresholdError("skew ds=1997-02-10: recency_days: logic_skew_rate 0.2 > 0", report=None)
    with pytest.raises(OSError), o.skew_gate():
        raise OSError("disk hiccup: retried by Airflow")


def _model(**kw):
    """A variant of the CDNOW model (dataclasses.replace): other cut-offs, horizons, ranges, schedules."""
    import dataclasses

    return dataclasses.replace(MODEL, **kw)


def test_training_window_follows_the_declared_cadence_and_horizon():
    import dataclasses

    from features.model import EntitySnapshots, EventLabel, Ranges

    src = MODEL.queries.source
    daily = _model(
        queries=EntitySnapshots(src, every="day"),
        label=EventLabel(src, horizon_days=7),
        ranges=Ranges(train_weeks=1, valid_weeks=1, holdback_weeks=1),
    )
    w = o.training_window(daily, {}, latest_mature="1997-06-04")
    assert w["holdback"] == ["1997-05-29", "1997-06-04"] and w["valid"] == ["1997-05-22", "1997-05-28"]
    assert w["embargo_days"] == 7 and w["train"] == ["1997-05-09", "1997-05-15"]
    assert len(w["cutoffs"]) == 21 and w["cutoffs"][:2] == ["1997-05-09", "1997-05-10"]
    # weekly on Wednesdays (weekday 2)
    wed = _model(queries=dataclasses.replace(MODEL.queries, weekday=2))
    w = o.training_window(wed, {}, latest_mature="1998-03-30")
    assert {dt.date.fromisoformat(c).weekday() for c in w["cutoffs"]} == {2} and w["holdback"][1] == "1998-03-25"
    # a scheduled run sees no label younger than the horizon
    w = o.training_window(daily, {}, logical_date="1997-06-11")
    assert w["holdback"][1] == "1997-06-04"


def test_fixed_ranges_of_the_declaration_are_the_defaults():
    from features.model import Ranges

    fixed = _model(
        ranges=Ranges(
            train=("1997-06-02", "1997-06-16"),
            valid=("1997-09-22", "1997-09-29"),
            holdback=("1997-10-06", "1997-10-06"),
        )
    )
    d = o.training_param_defaults(fixed)
    assert (d["train_from"], d["holdback_to"], d["embargo_days"], d["rounds"]) == ("1997-06-02", "1997-10-06", 90, 500)
    w = o.training_window(fixed, {})
    assert w["cutoffs"] == ["1997-06-02", "1997-06-09", "1997-06-16", "1997-09-22", "1997-09-29", "1997-10-06"]
    assert o.training_window(fixed, {"holdback_to": "1997-10-13"})["holdback"] == ["1997-10-06", "1997-10-13"]


def test_outcome_models_step_daily_with_their_maturity_as_embargo():
    from features.model import Condition, OutcomeLabel, QueryRows

    src = MODEL.queries.source
    m = _model(
        queries=QueryRows(src, time="event_ts"), label=OutcomeLabel((Condition("amount", ">", 100),), maturity_hours=30)
    )
    assert o.cadence(m) == ("day", 0) and o.label_horizon_days(m) == 1.25 and o.embargo_days(m) == 2
    assert o.cron_of("@weekly", m) == "@weekly"  # no cut-off weekday: the preset as declared


def test_schedules_and_dates_come_from_the_declarations():
    import dataclasses

    from features.model import Schedule

    assert o.cron_of("@weekly", MODEL) == "0 0 * * 1"  # the model's Monday cut-offs
    assert o.cron_of("@weekly", _model(queries=dataclasses.replace(MODEL.queries, weekday=6))) == "0 0 * * 0"
    assert o.cron_of("0 6 * * *", MODEL) == "0 6 * * *" and o.cron_of(None, MODEL) is None
    assert _model(schedule=Schedule(training=None)).schedule.training is None
    src = REPO.source("cdnow_purchases")
    kw = o.daily_dag_kwargs(src)
    assert str(kw["start_date"].date()) == "1997-01-01" and str(kw["end_date"].date()) == "1998-06-30"
    assert o.span_dates(dataclasses.replace(src, span=None)) == (o.DEFAULT_START, None)


def test_dag_ids_per_declaration():
    ids = o.dag_ids(REPO)
    assert len(ids) == len(REPO.sources) + len(REPO.models)
    assert {k: ids[k] for k in ("source:cdnow_purchases", "model:repurchase_90d")} == {
        "source:cdnow_purchases": ["features_daily__cdnow_purchases"],
        "model:repurchase_90d": [
            "training__repurchase_90d",
            "batch_scoring__repurchase_90d",
            "skew_nightly__repurchase_90d",
            "canary_ramp__repurchase_90d",
        ],
    }
