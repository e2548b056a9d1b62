"""Repurchase labels on real CDNOW data: definition, population boundary, maturity."""

import pandas as pd
import pytest

from jobs.config import Config
from jobs.ingest.cdnow import ingest_cdnow, read_cdnow
from jobs.lake import MissingPartitionError
from jobs.training.labels import (
    build_labels,
    label_rows,
    labels_table,
    latest_mature_cutoff,
    weekly_cutoffs,
)

HORIZON = 28  # short horizon: a small CDNOW range suffices (the job's default is 90)
CUTOFFS = ["1997-01-27", "1997-02-03"]


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    cfg = Config(lake_root=str(tmp_path_factory.mktemp("lake")))
    ingest_cdnow(cfg.lake(), "1997-01-01", "1997-03-02")
    build_labels(cfg, CUTOFFS, horizon_days=HORIZON)
    return cfg


@pytest.fixture(scope="module")
def events():
    return read_cdnow()


def test_weekly_cutoffs_are_the_mondays_of_the_range():
    assert weekly_cutoffs("1997-01-01", "1997-01-31") == ["1997-01-06", "1997-01-13", "1997-01-20", "1997-01-27"]
    assert weekly_cutoffs("1998-03-30", "1998-04-05") == ["1998-03-30"]


@pytest.mark.parametrize("ds", CUTOFFS)
def test_labels_follow_the_definition_exactly(cfg, events, ds):
    c = pd.Timestamp(ds, tz="UTC")
    known = set(events.loc[events["ingested_at"] < c, "customer_id"])
    buyers = set(
        events.loc[(events["event_ts"] >= c) & (events["event_ts"] < c + pd.Timedelta(days=HORIZON)), "customer_id"]
    )
    got = labels_table(cfg.lake()).read(ds)
    assert got["customer_id"].tolist() == sorted(known)
    assert set(got.loc[got["label"] == 1, "customer_id"]) == known & buyers
    assert (got["as_of"] == c).all() and str(got["label"].dtype) == "int8"
    assert 0 < got["label"].mean() < 1


def test_population_is_customers_ingested_before_the_cutoff(cfg, events):
    c = pd.Timestamp("1997-02-03", tz="UTC")
    first = events.groupby("customer_id")["event_ts"].min()
    day_before = set(first[first == c - pd.Timedelta(days=1)].index)
    on_cutoff = set(first[first == c].index)
    assert day_before and on_cutoff  # CDNOW acquires customers every day of Q1 1997
    ids = set(labels_table(cfg.lake()).read("1997-02-03")["customer_id"])
    assert day_before <= ids  # ingested at 23:59:59.999999 the day before: known
    assert not (on_cutoff & ids)  # first purchase on the cut-off day: not yet known


def test_manifest_records_definition_and_inputs(cfg):
    m = labels_table(cfg.lake()).manifest("1997-02-03")
    assert (
        m.producer["horizon_days"] == HORIZON
        and "cutoff <= event_ts < cutoff + horizon_days" in m.producer["definition"]
    )
    assert sorted(m.inputs) == ["raw_events/ds=1997-01-01..1997-02-02", "raw_events/ds=1997-02-03..1997-03-02"]


def test_a_label_without_its_whole_horizon_is_refused(cfg):
    with pytest.raises(MissingPartitionError, match="1997-03-03") as info:
        build_labels(cfg, ["1997-02-10"], horizon_days=HORIZON)
    assert any("not mature" in n for n in info.value.__notes__)
    assert not labels_table(cfg.lake()).exists("1997-02-10")
    assert latest_mature_cutoff(cfg.lake(), HORIZON) == "1997-02-03"


def test_label_rows_dedupes_and_sorts():
    df = label_rows([3, 1, 3, 2], [2, 9], pd.Timestamp("1997-02-03", tz="UTC"))
    assert df["customer_id"].tolist() == [1, 2, 3] and df["label"].tolist() == [0, 1, 0]


def test_cli_labels_and_training_set(cfg, capsys):
    from features import registry
    from jobs import cli
    from jobs.training import labels, training_set

    parser = cli.build_parser()
    args = parser.parse_args(
        ["--lake", cfg.lake_root, "labels", "--from", "1997-01-20", "--horizon-days", str(HORIZON)]
    )
    assert args.func(args) == 0
    assert "labels/ds=1997-01-20" in capsys.readouterr().out  # up to the last mature Monday
    args = parser.parse_args(["--lake", cfg.lake_root, "training-set", "--from", "1997-01-20", "--no-validate"])
    assert args.func(args) == 0
    assert "training_sets/customer_activity_v1/ds=1997-01-20" in capsys.readouterr().out
    fs = registry.get("customer_activity_v1")
    assert (
        training_set.training_set_table(cfg.lake(), fs).manifest("1997-01-20").rows
        == labels.labels_table(cfg.lake()).manifest("1997-01-20").rows
    )
