"""Training sets over a range in one engine pass == one build per cut-off, for both example models; the
first bad cut-off stops the range there (the ones before stay published, the ones after are not written).

CDNOW ``repurchase_90d`` (entity-snapshot labels, weekly cut-offs) on the shared training lake, whose
training sets were built one cut-off at a time (``build_training_sets``); flights ``dep_delay_15`` (an
outcome per query row, three feature sets joined on two keys) on six landed days of 2013.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pandas as pd
import pytest
from training_lake import MODEL, training_lake

from jobs.config import Config
from jobs.lake import MissingPartitionError, UnvalidatedPartitionError
from jobs.quality.validate import DataQualityError
from jobs.training.labels import build_labels, cutoffs_in, labels_table
from jobs.training.training_set import build_training_set, build_training_set_range, training_set_table

CUTOFFS = cutoffs_in(MODEL, "1997-02-03", "1997-03-31")  # the template's nine Mondays
FLIGHTS = "dep_delay_15"
FLIGHT_DAYS = ("2013-01-02", "2013-01-07")


def _manifests(cfg: Config, model, days) -> dict:
    table = training_set_table(cfg.lake(), model)
    return {d: table.manifest(d) for d in days}


def _lineage(manifests: dict, producer: bool = True) -> dict:
    return {
        d: (m.rows, m.content_fingerprint, m.inputs, m.producer if producer else m.producer["as_of"])
        for d, m in manifests.items()
    }


def _replace_unvalidated(table, ds: str, frame: pd.DataFrame) -> None:
    """Publish ``frame`` as ``ds`` of ``table`` at once, unvalidated: the template's raw days are validated,
    and a re-write of a validated day is only staged (readers keep the old one until it passes), so the
    validated version is quarantined first and the new one published as exploration input."""
    table.quarantine(ds, "test: replaced by hand")
    table.write_partition(ds, frame, producer={"job": "test"})


def _fresh(template: str, tmp_path_factory, **config) -> Config:
    """A copy of the template lake without its training sets (so "not written" can be seen)."""
    cfg = training_lake(template, tmp_path_factory, **config)
    shutil.rmtree(f"{cfg.lake_root}/training_sets")
    return cfg


# ---------------------------------------------------------------------------- CDNOW


def test_cdnow_range_equals_the_per_cutoff_builds(training_lake_template, tmp_path_factory):
    single = _manifests(Config(lake_root=training_lake_template), MODEL, CUTOFFS)
    cfg = _fresh(training_lake_template, tmp_path_factory)
    got = build_training_set_range(cfg, MODEL, reversed(CUTOFFS), validate=False, allow_unvalidated=True)
    assert [m.ds for m in got] == CUTOFFS  # published in cut-off order, whatever order they were given in
    ranged = _manifests(cfg, MODEL, CUTOFFS)
    assert _lineage(ranged) == _lineage(single)  # rows, content, inputs, the whole producer
    rows = [m.rows for m in ranged.values()]
    assert rows == sorted(rows) and rows[0] > 1000 and rows[-1] > rows[0]  # the population grows week by week
    assert "unvalidated_inputs" not in ranged[CUTOFFS[-1]].producer  # the template's raw days are validated
    # the frames themselves, not only their fingerprints
    key = ["customer_id", "as_of"]
    a = training_set_table(Config(lake_root=training_lake_template).lake(), MODEL).read(CUTOFFS[4])
    b = training_set_table(cfg.lake(), MODEL).read(CUTOFFS[4])
    pd.testing.assert_frame_equal(a.sort_values(key, ignore_index=True), b.sort_values(key, ignore_index=True))
    assert not list((Path(cfg.lake_root) / "_scratch").glob("training_set_range-*"))  # no spill left behind


@pytest.mark.dask
def test_cdnow_range_on_dask_equals_the_local_per_cutoff_builds(training_lake_template, tmp_path_factory, dask_client):
    single = _manifests(Config(lake_root=training_lake_template), MODEL, CUTOFFS)
    cfg = _fresh(training_lake_template, tmp_path_factory, engine="dask", buckets=4)
    build_training_set_range(cfg, MODEL, CUTOFFS, validate=False, allow_unvalidated=True, client=dask_client)
    assert _lineage(_manifests(cfg, MODEL, CUTOFFS), producer=False) == _lineage(single, producer=False)


@pytest.mark.spark
def test_cdnow_range_on_spark_equals_the_local_per_cutoff_builds(training_lake_template, tmp_path_factory, spark):
    single = _manifests(Config(lake_root=training_lake_template), MODEL, CUTOFFS)
    cfg = _fresh(training_lake_template, tmp_path_factory, engine="spark", buckets=4)
    build_training_set_range(cfg, MODEL, CUTOFFS, validate=False, allow_unvalidated=True, spark=spark)
    assert _lineage(_manifests(cfg, MODEL, CUTOFFS), producer=False) == _lineage(single, producer=False)


def test_a_set_trained_in_as_of_mode_gets_a_pass_per_cutoff_and_the_same_rows(training_lake_template, tmp_path_factory):
    # as_of mode reads the source through each label's own last input day (late arrivals count), so one
    # pass through the last cut-off's bound would not be bit-identical: each cut-off gets its own pass
    from jobs.engines.join import join_features

    fs = dataclasses.replace(MODEL.feature_sets[0], training_mode="as_of")
    model = dataclasses.replace(MODEL, joins=(fs,))
    days = CUTOFFS[:3]  # 02-03, 02-10, 02-17: their 28-day labels read through 03-02, 03-09, 03-16
    who = labels_table(Config(lake_root=training_lake_template).lake(), MODEL).read(days[0])["customer_id"].iloc[0]
    lakes = []
    for _ in range(2):
        cfg = _fresh(training_lake_template, tmp_path_factory)
        raw = cfg.lake().table(MODEL.label_source.table)
        late = raw.read("1997-03-05")
        extra = late.iloc[:1].copy()  # a purchase of 02-01 that arrives on 03-05: after 02-03's horizon
        extra["event_id"] = late["event_id"].max() + 10_000_000
        extra["customer_id"] = who  # a customer known at 02-03
        extra["event_ts"] = pd.Timestamp("1997-02-01 12:00", tz="UTC")
        extra["amount"] = 4321.0
        _replace_unvalidated(raw, "1997-03-05", pd.concat([late, extra], ignore_index=True))
        lakes.append(cfg)
    single, cfg = lakes
    for d in days:
        build_training_set(single, model, d, validate=False, allow_unvalidated=True)
    build_training_set_range(cfg, model, days, validate=False, allow_unvalidated=True)
    want, got = _manifests(single, model, days), _manifests(cfg, model, days)
    assert _lineage(got) == _lineage(want)
    assert got[days[0]].producer["mode"] == "as_of"
    raw_inputs = [k for k in got[days[0]].inputs if k.startswith("raw_events/")]
    assert raw_inputs == ["raw_events/cdnow_purchases/ds=1997-01-01..1997-03-02"]  # its own horizon
    # one pass through the last cut-off's bound would have counted the late purchase at 02-03
    labels = labels_table(cfg.lake(), model).files(days[0])
    naive = pd.concat(list(join_features(cfg, model, labels, events_through="1997-03-16")))
    published = training_set_table(cfg.lake(), model).read(days[0])
    spent = [f.loc[f["customer_id"] == who, "spend_lifetime"].iloc[0] for f in (naive, published)]
    assert spent[0] == pytest.approx(spent[1] + 4321.0)


def test_a_bad_cutoff_stops_the_range_there_and_names_it(training_lake_template, tmp_path_factory):
    cfg = _fresh(training_lake_template, tmp_path_factory)
    raw = cfg.lake().table(MODEL.label_source.table)
    bad = raw.read("1997-02-20")
    bad.loc[bad.index[0], "amount"] = -50_000.0  # a refund exported as a purchase: spend sums go negative
    _replace_unvalidated(raw, "1997-02-20", bad)
    # the first cut-off that reads 1997-02-20 is 1997-02-24 (features see ingest days before the cut-off)
    with pytest.raises(DataQualityError, match="ds=1997-02-24") as err:
        build_training_set_range(cfg, MODEL, CUTOFFS, allow_unvalidated=True)
    notes = "\n".join(getattr(err.value, "__notes__", []))
    assert (
        "stopped at ds=1997-02-24: 3 cut-off(s) 1997-02-03..1997-02-17 published; "
        "5 cut-off(s) 1997-03-03..1997-03-31 not published" in notes
    )
    table = training_set_table(cfg.lake(), MODEL)
    assert table.partitions() == ["1997-02-03", "1997-02-10", "1997-02-17"]
    assert table.quarantined("1997-02-24")  # the failed cut-off went to the quarantine, not the table
    # the ones before it passed the same gate a single build runs
    again = build_training_set(cfg, MODEL, "1997-02-10", allow_unvalidated=True)
    assert again.content_fingerprint == table.manifest("1997-02-10").content_fingerprint


def test_inputs_are_checked_for_every_cutoff_before_any_work(training_lake_template, tmp_path_factory):
    cfg = _fresh(training_lake_template, tmp_path_factory)
    table = training_set_table(cfg.lake(), MODEL)
    # a cut-off without labels (1997-04-07 was never labelled): named, nothing published
    with pytest.raises(MissingPartitionError, match="1997-04-07"):
        build_training_set_range(cfg, MODEL, [*CUTOFFS, "1997-04-07"], validate=False, allow_unvalidated=True)
    assert table.partitions() == []
    # an unvalidated raw day refused (the default), before the first cut-off is built
    raw = cfg.lake().table(MODEL.label_source.table)
    _replace_unvalidated(raw, "1997-01-20", raw.read("1997-01-20"))
    with pytest.raises(UnvalidatedPartitionError, match="1997-01-20"):
        build_training_set_range(cfg, MODEL, CUTOFFS, validate=False, allow_unvalidated=False)
    assert table.partitions() == []


def test_an_engine_failure_publishes_nothing_and_says_so(training_lake_template, tmp_path_factory):
    cfg = _fresh(training_lake_template, tmp_path_factory)
    with pytest.raises(TypeError, match="client") as err:  # the local engine takes no Dask client
        build_training_set_range(cfg, MODEL, CUTOFFS, validate=False, allow_unvalidated=True, client=object())
    notes = "\n".join(getattr(err.value, "__notes__", []))
    assert "the engine pass failed; no cut-off published; 9 cut-off(s) 1997-02-03..1997-03-31 not published" in notes
    assert training_set_table(cfg.lake(), MODEL).partitions() == []
    assert not list((Path(cfg.lake_root) / "_scratch").glob("training_set_range-*"))  # the spill is removed


# ---------------------------------------------------------------------------- flights


@pytest.fixture(scope="module")
def flights_lake(tmp_path_factory):
    from jobs.ingest.landing import land

    cfg = Config(lake_root=str(tmp_path_factory.mktemp("flights_range") / "lake"))
    land(cfg, "flight_schedule", "2012-12-25", "2013-01-09")
    land(cfg, "flights", "2013-01-01", "2013-01-09")
    land(cfg, "weather", "2013-01-01", "2013-01-09")
    model = cfg.repo().model(FLIGHTS)
    build_labels(cfg, model, cutoffs_in(model, *FLIGHT_DAYS), allow_unvalidated=True)  # not validated: not tested here
    return cfg.lake_root


def _flights_copy(root: str, tmp_path, name: str) -> Config:
    shutil.copytree(root, tmp_path / name)
    return Config(lake_root=str(tmp_path / name))


def test_flights_range_equals_the_per_cutoff_builds(flights_lake, tmp_path):
    single, ranged = _flights_copy(flights_lake, tmp_path, "single"), _flights_copy(flights_lake, tmp_path, "ranged")
    model = single.repo().model(FLIGHTS)
    days = cutoffs_in(model, *FLIGHT_DAYS)
    for d in days:
        build_training_set(single, model, d, validate=False, allow_unvalidated=True)
    build_training_set_range(ranged, model, days, validate=False, allow_unvalidated=True)
    want, got = _manifests(single, model, days), _manifests(ranged, model, days)
    assert _lineage(got) == _lineage(want)
    assert len(model.feature_sets) == 3 and [m.rows for m in got.values()] == [942, 916, 915, 729, 825, 930]
    # three sets' sources, each read through the day before the cut-off's last as_of, each from its own
    # longest window before the first as_of: flights twice (plane_recent_v1 7 days, origin_congestion_v1 24 h)
    reads = sorted(k.rpartition("/ds=") for k in got[days[-1]].inputs)
    assert [t for t, _, _ in reads] == [
        "labels/dep_delay_15",
        "raw_events/flights",
        "raw_events/flights",
        "raw_events/weather",
    ]
    # (the plane set's 7 days before the first query reach past the table's first day, 2013-01-01)
    (congestion, plane) = sorted((r for t, _, r in reads if t == "raw_events/flights"), reverse=True)
    assert (congestion.split("..")[0], plane.split("..")[0]) == ("2013-01-06", "2013-01-01")
    assert plane.split("..")[1] == congestion.split("..")[1]
    key = ["flight_id"]
    a = training_set_table(single.lake(), model).read(days[2]).sort_values(key, ignore_index=True)
    b = training_set_table(ranged.lake(), model).read(days[2]).sort_values(key, ignore_index=True)
    pd.testing.assert_frame_equal(a, b)


def test_flights_a_bad_cutoff_stops_the_range(flights_lake, tmp_path):
    cfg = _flights_copy(flights_lake, tmp_path, "bad")
    model = cfg.repo().model(FLIGHTS)
    days = cutoffs_in(model, *FLIGHT_DAYS)
    labels = labels_table(cfg.lake(), model)
    rows = labels.read("2013-01-04")
    labels.write_partition(
        "2013-01-04", pd.concat([rows, rows.iloc[:3]]), producer=labels.manifest("2013-01-04").producer
    )
    with pytest.raises(DataQualityError, match="ds=2013-01-04") as err:  # a query counted twice: duplicate keys
        build_training_set_range(cfg, model, days, allow_unvalidated=True)
    notes = "\n".join(getattr(err.value, "__notes__", []))
    assert "stopped at ds=2013-01-04: 2 cut-off(s) 2013-01-02..2013-01-03 published; 3 cut-off(s)" in notes
    table = training_set_table(cfg.lake(), model)
    assert table.partitions() == ["2013-01-02", "2013-01-03"] and table.quarantined("2013-01-04")


def test_the_cli_builds_a_range_in_one_pass_or_per_cutoff(training_lake_template, tmp_path_factory, capsys):
    from jobs import cli

    single = _manifests(Config(lake_root=training_lake_template), MODEL, CUTOFFS)
    for extra in ([], ["--per-cutoff"]):
        cfg = _fresh(training_lake_template, tmp_path_factory)
        argv = ["--lake", cfg.lake_root, "training-set", "--from", CUTOFFS[0], "--to", CUTOFFS[-1]]
        args = cli.build_parser().parse_args([*argv, "--model", MODEL.name, "--allow-unvalidated", *extra])
        assert args.func(args) == 0
        out = capsys.readouterr().out
        assert [ln.split(":")[0] for ln in out.splitlines()] == [f"training_sets/{MODEL.name}/ds={d}" for d in CUTOFFS]
        got = _manifests(cfg, MODEL, CUTOFFS)
        assert _lineage(got, producer=False) == _lineage(single, producer=False)
        assert all(training_set_table(cfg.lake(), MODEL).exists(d) for d in CUTOFFS)
