"""The demo's days and declarations (``jobs.local.demo``, ``lockstep demo --no-airflow``), without Airflow:
the window comes from the declarations' spans, and a repo written here runs with no code change."""

from __future__ import annotations

import dataclasses
import textwrap

import pytest

from jobs.cli.demo import snapshot_window
from jobs.local import demo

SHOPS = """
from features.model import Condition, Join, Model, OutcomeLabel, QueryRows
from features.source import Column, FileLander, Key, Source, hours
from features.spec import FeatureSet, count

ORDERS = Source(
    name="shop_orders",
    keys=(Key("shop", "string"),),
    columns=(Column("due_ts", "timestamp[us, tz=UTC]", nullable=False), Column("minutes_late", "double", min=0)),
    lander=FileLander("csv", "{root}/orders/{ds}.csv"),
    event_id="order_id",
    event_id_type="string",
    span=("2024-01-01", "2024-01-03"),
    min_share_of_previous=None,
)
SHOP_LOAD = FeatureSet("shop_load_v1", source=ORDERS, features=(count("shop_orders_6h", hours(6)),))
LATE = Model(
    name="late_order",
    queries=QueryRows(ORDERS, time="due_ts", offset_hours=-1),
    label=OutcomeLabel((Condition("minutes_late", ">=", 15),)),
    joins=(Join(SHOP_LOAD),),
)
"""


def cdnow():
    from features import repo

    return repo.load().source("cdnow_purchases")


def test_the_demo_windows_come_from_the_source_span():
    src = cdnow()
    # the CDNOW example's windows, as before the declarations: June 1998 (Airflow), March 1997 (--no-airflow)
    assert demo.features_window(src) == ("1998-06-01", "1998-06-03")
    assert demo.features_window(src, "1998-05-30", days=2) == ("1998-05-30", "1998-05-31")
    assert snapshot_window(src) == ("1997-03-01", "1997-03-31")
    assert snapshot_window(src, "1997-02-10", "1997-02-12") == ("1997-02-10", "1997-02-12")
    late = dataclasses.replace(src, span=("2024-11-15", "2025-02-20"))
    assert snapshot_window(late) == ("2025-01-01", "2025-01-31")
    assert demo.features_window(late) == ("2025-02-01", "2025-02-03")


def test_a_source_without_span_needs_explicit_days():
    src = dataclasses.replace(cdnow(), span=None)
    with pytest.raises(ValueError, match="declares no span"):
        demo.features_window(src)
    with pytest.raises(ValueError, match="declares no span"):
        snapshot_window(src)
    assert demo.features_window(src, "2024-01-01", days=1) == ("2024-01-01", "2024-01-01")


def test_the_demo_model_is_the_repos_default_or_the_named_one():
    from jobs.config import Config

    cfg = Config()
    assert demo.demo_model(cfg).name == cfg.repo().default_model().name
    assert demo.demo_model(cfg, "repurchase_90d").name == "repurchase_90d"
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        demo.demo_model(cfg, "nope")


def test_demo_without_airflow_lands_and_snapshots_a_repo_written_here(tmp_path, capsys, monkeypatch):
    import os

    from jobs.cli import main

    monkeypatch.delenv("LOCKSTEP_REPO", raising=False)

    (tmp_path / "orders").mkdir()
    rows = {
        "2024-01-01": [("o1", "a", "2024-01-01T10:00:00Z", "2024-01-01T11:00:00Z", 3.0)],
        "2024-01-02": [
            ("o2", "a", "2024-01-02T09:00:00Z", "2024-01-02T10:00:00Z", 20.0),
            ("o3", "b", "2024-01-02T12:00:00Z", "2024-01-02T13:00:00Z", 0.0),
        ],
        "2024-01-03": [("o4", "b", "2024-01-03T08:00:00Z", "2024-01-03T09:00:00Z", 1.0)],
    }
    for ds, day in rows.items():
        lines = ["order_id,shop,event_ts,due_ts,minutes_late"] + [",".join(map(str, r)) for r in day]
        (tmp_path / "orders" / f"{ds}.csv").write_text("\n".join(lines) + "\n")
    decl = tmp_path / "decl"
    decl.mkdir()
    (decl / "shops.py").write_text(textwrap.dedent(SHOPS).replace("{root}", str(tmp_path)))
    lake = str(tmp_path / "lake")
    code = main(
        ["--lake", lake, "--repo", str(decl), "demo", "--no-airflow", "--from", "2024-01-02", "--to", "2024-01-03"]
    )
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "[1/2] raw_events/shop_orders: 3 daily partitions, 4 events, validated through 2024-01-03" in out
    # a 6-hour set: the snapshot of 01-03 reads 01-03 only, where shop b alone has an order (shop a's row
    # would be all defaults; README "How much history a read takes")
    assert "[2/2] shop_load_v1 snapshots on the local engine: 2 days, 1 shop keys on 2024-01-03" in out
    assert "feature_snapshots/shop_load_v1/ds=2024-01-03" in out
    assert "LOCKSTEP_REPO" not in os.environ  # --repo is this command's, not the process's


def test_the_demo_runs_every_model_the_default_first_or_the_named_one():
    from jobs.config import Config

    cfg = Config()
    assert [m.name for m in demo.demo_models(cfg)] == ["repurchase_90d", "dep_delay_15"]
    assert [m.name for m in demo.demo_models(cfg, "dep_delay_15")] == ["dep_delay_15"]


def test_the_demo_backfills_every_source_a_model_reads_and_trains_on_a_short_window():
    from jobs.config import Config

    repo = Config().repo()
    flights, cdnow_model = repo.model("dep_delay_15"), repo.model("repurchase_90d")
    assert demo.features_dags(flights) == [
        "features_daily__flight_schedule",
        "features_daily__flights",
        "features_daily__weather",
    ]
    assert demo.features_dags(cdnow_model) == ["features_daily__cdnow_purchases"]
    assert demo.training_conf_for(cdnow_model, "1998-03-30", before="1998-06-01") == {
        "train_weeks": 3,
        "valid_weeks": 1,
        "holdback_weeks": 1,
        "rounds": 100,
    }
    # dep_delay_15 declares the year's ranges (explicit dates win in the DAG): two weeks of daily cut-offs,
    # then a week each, ending before the first features day (the demo trains on the past of what it scores)
    assert demo.training_conf_for(flights, "2013-12-22", before="2013-12-01") == {
        "train_weeks": 2,
        "valid_weeks": 1,
        "holdback_weeks": 1,
        "rounds": 100,
        "train_from": "2013-11-03",
        "train_to": "2013-11-16",
        "valid_from": "2013-11-17",
        "valid_to": "2013-11-23",
        "holdback_from": "2013-11-24",
        "holdback_to": "2013-11-30",
    }
    assert demo.features_window(flights.queries.source) == ("2013-12-01", "2013-12-03")


def test_the_demo_validates_the_days_its_pipeline_reads():
    from jobs.config import Config

    repo = Config().repo()
    flights, cdnow_model = repo.model("dep_delay_15"), repo.model("repurchase_90d")
    cutoffs = [f"2013-11-{d:02d}" for d in range(3, 31)]
    # plane_recent_v1's 7-day window + 1 day before the first cut-off; the timetable's 7-day lead reads
    # 2013-10-27; the last cut-off's outcomes read 2013-12-02; the skew job's late-data window 3 days past Dec 3
    assert demo.validation_window(flights, cutoffs, "2013-12-03") == ("2013-10-26", "2013-12-06")
    # CDNOW's set reads all history; the 90-day labels of the last cut-off read past the tail
    first, last = demo.validation_window(cdnow_model, ["1998-02-02", "1998-03-30"], "1998-06-03")
    assert first is None and last == cdnow_model.label_reads("1998-03-30")["cdnow_purchases"][1] > "1998-06-06"
