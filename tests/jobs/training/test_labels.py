"""Repurchase labels on real CDNOW data: definition, population boundary, maturity."""

import dataclasses

import pandas as pd
import pytest

from features import repo
from jobs.config import Config
from jobs.ingest.cdnow import read_cdnow
from jobs.ingest.landing import land
from jobs.lake import UNVALIDATED_INPUTS, MissingPartitionError, UnvalidatedPartitionError
from jobs.schemas import raw_schema, to_raw
from jobs.training.labels import (
    build_labels,
    cutoffs_in,
    label_rows,
    labels_table,
    latest_mature_cutoff,
    weekly_cutoffs,
)

HORIZON = 28  # short horizon: a small CDNOW range suffices (the model's is 90)
CUTOFFS = ["1997-01-27", "1997-02-03"]
MODEL = repo.load().model("repurchase_90d")
M28 = dataclasses.replace(MODEL, label=dataclasses.replace(MODEL.label, horizon_days=HORIZON))


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    cfg = Config(lake_root=str(tmp_path_factory.mktemp("lake")))
    land(cfg, "cdnow_purchases", "1997-01-01", "1997-03-02")
    build_labels(cfg, M28, CUTOFFS, allow_unvalidated=True)
    return cfg


@pytest.fixture(scope="module")
def events():
    return read_cdnow()


def test_weekly_cutoffs_are_the_mondays_of_the_range():
    assert weekly_cutoffs("1997-01-01", "1997-01-31") == ["1997-01-06", "1997-01-13", "1997-01-20", "1997-01-27"]
    assert weekly_cutoffs("1998-03-30", "1998-04-05") == ["1998-03-30"]
    assert cutoffs_in(MODEL, "1997-01-01", "1997-01-31") == weekly_cutoffs("1997-01-01", "1997-01-31")
    daily = dataclasses.replace(MODEL, queries=dataclasses.replace(MODEL.queries, every="day"))
    assert cutoffs_in(daily, "1997-01-30", "1997-02-02") == ["1997-01-30", "1997-01-31", "1997-02-01", "1997-02-02"]


@pytest.mark.parametrize("ds", CUTOFFS)
def test_labels_follow_the_definition_exactly(cfg, events, ds):
    c = pd.Timestamp(ds, tz="UTC")
    known = set(events.loc[events["ingested_at"] < c, "customer_id"])
    buyers = set(
        events.loc[(events["event_ts"] >= c) & (events["event_ts"] < c + pd.Timedelta(days=HORIZON)), "customer_id"]
    )
    got = labels_table(cfg.lake(), MODEL).read(ds)
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
    ids = set(labels_table(cfg.lake(), MODEL).read("1997-02-03")["customer_id"])
    assert day_before <= ids  # ingested at 23:59:59.999999 the day before: known
    assert not (on_cutoff & ids)  # first purchase on the cut-off day: not yet known


def test_manifest_records_definition_and_inputs(cfg):
    m = labels_table(cfg.lake(), MODEL).manifest("1997-02-03")
    assert (
        m.producer["horizon_days"] == HORIZON
        and "cutoff <= event_ts < cutoff + 28 days" in m.producer["definition"]
        and m.producer["model"] == "repurchase_90d"
    )
    assert m.table == "labels/repurchase_90d"
    assert sorted(m.inputs) == [
        "raw_events/cdnow_purchases/ds=1997-01-01..1997-02-02",
        "raw_events/cdnow_purchases/ds=1997-02-03..1997-03-02",
    ]


def test_a_label_without_its_whole_horizon_is_refused(cfg):
    with pytest.raises(MissingPartitionError, match="1997-03-03") as info:
        build_labels(cfg, M28, ["1997-02-10"], allow_unvalidated=True)
    assert any("not mature" in n for n in info.value.__notes__)
    assert not labels_table(cfg.lake(), MODEL).exists("1997-02-10")
    assert latest_mature_cutoff(cfg, M28) == "1997-02-03"
    assert latest_mature_cutoff(cfg, "repurchase_90d") is None  # 90 days are not in the lake


def test_label_rows_dedupes_and_sorts():
    df = label_rows([3, 1, 3, 2], [2, 9], pd.Timestamp("1997-02-03", tz="UTC"), "customer_id")
    assert df["customer_id"].tolist() == [1, 2, 3] and df["label"].tolist() == [0, 1, 0]


def test_cli_labels_and_training_set(cfg, capsys, tmp_path, monkeypatch):
    """The CLI on a model declared in a repo directory (a 28-day variant of the shipped one)."""
    from jobs import cli
    from jobs.lake import UnvalidatedPartitionError
    from jobs.training import labels, training_set

    (tmp_path / "repurchase_28d.py").write_text(
        "import dataclasses\n"
        "from features.projects.cdnow.repurchase_90d import REPURCHASE_90D as M\n"
        "REPURCHASE_28D = dataclasses.replace(M, name='repurchase_28d',\n"
        "                                     label=dataclasses.replace(M.label, horizon_days=28))\n"
    )
    monkeypatch.setenv("LOCKSTEP_REPO", str(tmp_path))
    parser = cli.build_parser()
    # the directory declares repurchase_28d and imports repurchase_90d: two models, none the default
    args = parser.parse_args(["--lake", cfg.lake_root, "labels", "--from", "1997-01-20"])
    with pytest.raises(KeyError, match=r"2 models \['repurchase_28d', 'repurchase_90d'\] and no DEFAULT_MODEL"):
        args.func(args)
    args = parser.parse_args(["--lake", cfg.lake_root, "labels", "--from", "1997-01-20", "--model", "repurchase_28d"])
    # the fixture's raw days were never validated: refused, naming them and the override
    with pytest.raises(
        UnvalidatedPartitionError, match=r"ds=1997-01-01\.\.1997-02-16: not validated .*--allow-unvalidated"
    ):
        args.func(args)
    args = parser.parse_args(
        ["--lake", cfg.lake_root, "labels", "--from", "1997-01-20", "--model", "repurchase_28d", "--allow-unvalidated"]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "labels/repurchase_28d/ds=1997-01-20" in out and "ds=1997-02-03" in out  # up to the last mature Monday
    args_list = ["--lake", cfg.lake_root, "training-set", "--from", "1997-01-20", "--model", "repurchase_28d"]
    args_list.append("--no-validate")
    args = parser.parse_args(args_list)
    # the fixture's raw days were never validated: refused, naming them
    with pytest.raises(
        UnvalidatedPartitionError, match=r"ds=1997-01-01\.\.1997-02-16: not validated \(run `lockstep validate"
    ):
        args.func(args)
    args = parser.parse_args([*args_list, "--allow-unvalidated"])
    assert args.func(args) == 0
    assert "training_sets/repurchase_28d/ds=1997-01-20" in capsys.readouterr().out
    m = Config(lake_root=cfg.lake_root, repo_package=str(tmp_path)).repo().model("repurchase_28d")
    built = training_set.training_set_table(cfg.lake(), m).manifest("1997-01-20")
    assert (
        built.producer["unvalidated_inputs"][0] == "raw_events/cdnow_purchases/ds=1997-01-01"
    )  # the override, recorded
    assert (
        training_set.training_set_table(cfg.lake(), m).manifest("1997-01-20").rows
        == labels.labels_table(cfg.lake(), m).manifest("1997-01-20").rows
    )


def test_event_labels_with_conditions_string_keys_daily_cutoffs_and_a_fractional_horizon(tmp_path):
    """EntitySnapshots + EventLabel beyond CDNOW: string keys, daily cut-offs, ``where``, 12 hours."""
    from features.model import Condition, EntitySnapshots, EventLabel, Model
    from features.source import Column, FileLander, Key, Source, hours
    from features.spec import FeatureSet, count

    src = Source(
        "payments",
        (Key("user", "string"),),
        (Column("status", "string"), Column("value", "double")),
        FileLander("csv", "memory://p/{ds}.csv"),
    )
    fs = FeatureSet("user_payments_v1", source=src, features=(count("payments_1d", 1),))
    model = Model(
        "pays_again",
        queries=EntitySnapshots(src, every="day"),
        label=EventLabel(
            src, horizon_days=hours(12), where=(Condition("status", "==", "paid"), Condition("value", ">", 5))
        ),
        joins=(fs,),
    )
    t = pd.Timestamp
    rows = [  # user, event time, ingested, status, value
        ("u1", "2024-01-01 10:00", "2024-01-01 10:00", "paid", 10.0),  # known at 01-02
        ("u2", "2024-01-01 11:00", "2024-01-01 11:00", "paid", 1.0),  # known at 01-02
        ("u3", "2024-01-01 23:00", "2024-01-02 00:30", "paid", 9.0),  # ingested after the cut-off: not known
        ("u1", "2024-01-02 11:59", "2024-01-02 12:00", "paid", 7.0),  # u1: within 12 h, matches -> 1
        ("u2", "2024-01-02 06:00", "2024-01-02 06:00", "failed", 50.0),  # u2: not paid
        ("u2", "2024-01-02 07:00", "2024-01-02 07:00", "paid", 5.0),  # u2: value not > 5 -> 0
        ("u3", "2024-01-02 01:00", "2024-01-02 01:00", "paid", 6.0),  # u3 is not in the population
        ("u4", "2024-01-01 09:00", "2024-01-01 09:00", None, None),  # known
        ("u4", "2024-01-02 12:00", "2024-01-02 12:00", "paid", 99.0),  # at cutoff + 12 h: outside -> 0
    ]
    df = pd.DataFrame(rows, columns=["user", "event_ts", "ingested_at", "status", "value"])
    for c in ("event_ts", "ingested_at"):
        df[c] = pd.to_datetime(df[c], utc=True).astype("datetime64[us, UTC]")
    df.insert(0, "event_id", range(len(df)))
    cfg = Config(lake_root=str(tmp_path / "lake"))
    table = cfg.lake().table(src.table, raw_schema(src))
    for ds in ("2024-01-01", "2024-01-02", "2024-01-03"):
        part = df[df["ingested_at"].dt.strftime("%Y-%m-%d") == ds].reset_index(drop=True)
        table.write_partition(ds, to_raw(src, part), producer={"job": "test"})
    assert cutoffs_in(model, "2024-01-02", "2024-01-03") == ["2024-01-02", "2024-01-03"]
    assert latest_mature_cutoff(cfg, model) == "2024-01-03"  # a 12-hour horizon reads its own day only
    (m,) = build_labels(cfg, model, ["2024-01-02"], allow_unvalidated=True)
    got = labels_table(cfg.lake(), model).read("2024-01-02")
    assert got["user"].tolist() == ["u1", "u2", "u4"] and got["label"].tolist() == [1, 0, 0]
    assert (got["as_of"] == t("2024-01-02", tz="UTC")).all()
    assert "status == 'paid' and value > 5" in m.producer["definition"]
    assert sorted(m.inputs) == [
        "raw_events/payments/ds=2024-01-01..2024-01-01",
        "raw_events/payments/ds=2024-01-02..2024-01-02",
    ]


@pytest.mark.parametrize(
    "schedule_to, flights_to, mature",
    [
        # the timetable bounds it: labels of C read its partitions C-8 .. C+2 (lead 8 days, maturity 24 h)
        ("2013-01-06", "2013-01-12", "2013-01-04"),
        # the flights (the outcomes) bound it: labels of C read their partitions C-1 .. C+2
        ("2013-01-12", "2013-01-05", "2013-01-03"),
    ],
)
def test_an_outcome_label_is_mature_when_both_the_queries_and_the_outcomes_are_landed(
    tmp_path, schedule_to, flights_to, mature
):
    """dep_delay_15: queries from the timetable (published a week ahead), outcomes from the flights.
    Bounding by the outcome source alone picked cut-offs whose timetable was not landed (the demo's
    training DAG failed on raw_events/flight_schedule/ds=2013-12-25)."""
    cfg = Config(lake_root=str(tmp_path / "lake"))
    land(cfg, "flight_schedule", "2012-12-25", schedule_to)
    land(cfg, "flights", "2013-01-01", flights_to)
    assert latest_mature_cutoff(cfg, "dep_delay_15") == mature
    (m,) = build_labels(cfg, "dep_delay_15", [mature], allow_unvalidated=True)
    assert m.rows > 500  # a day of scheduled departures, each with its outcome
    after = (pd.Timestamp(mature) + pd.Timedelta(days=1)).strftime("%Y-%m-%d")
    with pytest.raises(MissingPartitionError, match="not mature"):
        build_labels(cfg, "dep_delay_15", [after], allow_unvalidated=True)


def test_labels_refuse_unvalidated_raw_days_and_so_does_a_training_set_built_from_overridden_labels(tmp_path):
    """The raw days a cut-off reads must be validated; with the override the labels name them, and the
    training set built from such labels is refused too (no suite validates the labels table itself)."""
    from jobs.quality.validate import validate_range
    from jobs.training.training_set import build_training_set, training_set_table

    raw = "raw_events/cdnow_purchases"
    cfg = Config(lake_root=str(tmp_path / "lake"))
    land(cfg, "cdnow_purchases", "1997-01-01", "1997-02-10")
    validate_range(cfg, "raw_events", "1997-01-01", "1997-02-04", source="cdnow_purchases", docs=False)
    with pytest.raises(UnvalidatedPartitionError) as err:
        build_labels(cfg, M28, ["1997-01-13"])  # reads the label window 01-13 .. 02-09 (28 days, grace)
    assert str(err.value).startswith(
        f"table '{raw}' ds=1997-02-05..1997-02-09: not validated (run `lockstep validate raw_events --table {raw} "
        "--ds 1997-02-05 --to 1997-02-09`); to build from it anyway for exploration pass --allow-unvalidated"
    )
    assert labels_table(cfg.lake(), M28).partitions() == []  # nothing published
    (m,) = build_labels(cfg, M28, ["1997-01-13"], allow_unvalidated=True)
    assert m.producer[UNVALIDATED_INPUTS] == [f"{raw}/ds=1997-02-{d:02d}" for d in range(5, 10)]
    with pytest.raises(UnvalidatedPartitionError, match=f"table '{raw}' ds=1997-02-05..1997-02-09: not validated"):
        build_training_set(cfg, M28, "1997-01-13", validate=False)
    assert training_set_table(cfg.lake(), M28).partitions() == []
    ts = build_training_set(cfg, M28, "1997-01-13", validate=False, allow_unvalidated=True)
    assert ts.producer[UNVALIDATED_INPUTS] == m.producer[UNVALIDATED_INPUTS]
    # once the days are validated, the default builds carry no such mark
    validate_range(cfg, "raw_events", "1997-02-05", "1997-02-10", source="cdnow_purchases", docs=False)
    (good,) = build_labels(cfg, M28, ["1997-01-13"])
    assert UNVALIDATED_INPUTS not in good.producer and good.content_fingerprint == m.content_fingerprint
    assert UNVALIDATED_INPUTS not in build_training_set(cfg, M28, "1997-01-13", validate=False).producer
