"""Range backfills: one engine pass for N days == N single-day builds, bit for bit, per engine;
a bad day stops the range there."""

import shutil

import pytest

from jobs.config import Config
from jobs.ingest.cdnow_synthetic import generate_events
from jobs.lake import day_range
from jobs.quality.validate import DataQualityError, validate_range
from jobs.snapshots import build_snapshot, build_snapshot_range, snapshot_table

FS = "customer_activity_v1"
DAYS = ("2024-01-09", "2024-01-13")  # late arrivals and duplicates land up to 5 days after their event


@pytest.fixture(scope="module")
def lake_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("range_lake")
    # late_rate/dup_rate: copies and late events sit in later partitions than their event day
    cfg = Config(lake_root=str(root))
    generate_events(cfg.lake(), entities=300, events=6_000, days=16, late_rate=0.05, dup_rate=0.03)
    return root


@pytest.fixture(scope="module")
def validated_root(lake_root, tmp_path_factory):
    """The lake with its raw days validated, as the DAGs leave them: a snapshot built from unvalidated
    raw days is never marked validated."""
    root = tmp_path_factory.mktemp("range_lake_validated") / "lake"
    shutil.copytree(lake_root, root)
    cfg = Config(lake_root=str(root))
    raw = cfg.lake().table(cfg.repo().feature_set(FS).source.table)
    validate_range(cfg, "raw_events", raw.first_ds(), DAYS[1], docs=False)  # the tail is late arrivals only
    return root


def _copy(lake_root, tmp_path, name: str, engine: str) -> Config:
    shutil.copytree(lake_root, tmp_path / name)
    return Config(lake_root=str(tmp_path / name), engine=engine, buckets=4)


def _lineage(cfg: Config):
    table = snapshot_table(cfg.lake(), cfg.repo().feature_set(FS))
    out = {}
    for ds in day_range(*DAYS):
        m = table.manifest(ds)
        out[ds] = (m.rows, m.content_fingerprint, m.inputs, m.producer["as_of"], m.producer["job"])
    return out


def _check_range_equals_single_days(lake_root, tmp_path, engine: str, **engine_options):
    single = _copy(lake_root, tmp_path, "single", engine)
    ranged = _copy(lake_root, tmp_path, "ranged", engine)
    for ds in day_range(*DAYS):
        build_snapshot(single, ds, FS, **engine_options)
    manifests = build_snapshot_range(ranged, *DAYS, FS, **engine_options)
    assert [m.ds for m in manifests] == list(day_range(*DAYS))
    want, got = _lineage(single), _lineage(ranged)
    assert got == want
    rows = [r for r, *_ in want.values()]
    assert rows == sorted(rows) and rows[0] < rows[-1] and rows[0] > 200  # entities accumulate day by day
    # the range validated every day before publishing it (the gate marks the version)
    table = snapshot_table(ranged.lake(), ranged.repo().feature_set(FS))
    assert all(table.validated(ds) for ds in day_range(*DAYS))
    # no spill left behind
    assert not list((tmp_path / "ranged" / "_scratch").glob("snapshot_range-*/ds=*"))


def test_range_equals_single_day_builds_local(validated_root, tmp_path):
    _check_range_equals_single_days(validated_root, tmp_path, "local")


@pytest.mark.dask
def test_range_equals_single_day_builds_dask(validated_root, tmp_path, dask_client):
    _check_range_equals_single_days(validated_root, tmp_path, "dask", client=dask_client)


@pytest.mark.spark
def test_range_equals_single_day_builds_spark(validated_root, tmp_path, spark):
    _check_range_equals_single_days(validated_root, tmp_path, "spark", spark=spark)


def test_a_bad_day_stops_the_range_there_and_names_it(lake_root, tmp_path):
    cfg = _copy(lake_root, tmp_path, "bad", "local")
    raw = cfg.lake().table("raw_events/cdnow_purchases")
    bad = raw.read("2024-01-11")
    bad.loc[0, "amount"] = -500.0  # a refund exported as a purchase: spend sums go negative
    raw.write_partition("2024-01-11", bad, producer={"job": "test"})
    with pytest.raises(DataQualityError, match="ds=2024-01-11") as err:
        build_snapshot_range(cfg, *DAYS, FS, allow_unvalidated=True)  # the snapshot suite's gate stops it
    notes = "\n".join(getattr(err.value, "__notes__", []))
    assert "stopped at ds=2024-01-11: 2024-01-09..2024-01-10 published; 2024-01-12..2024-01-13 not published" in notes
    table = snapshot_table(cfg.lake(), cfg.repo().feature_set(FS))
    assert table.partitions() == ["2024-01-09", "2024-01-10"]
    assert table.quarantined("2024-01-11")  # the failed day went to the quarantine, not the table


def test_range_before_any_raw_day_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no raw_events partitions at or before ds=2024-01-01"):
        build_snapshot_range(Config(lake_root=str(tmp_path)), "2024-01-01", "2024-01-03", FS)


def test_a_backfill_build_covers_the_validated_raw_days_after_it_then_skips_them(lake_root, tmp_path):
    from jobs.quality.validate import validate_partition
    from jobs.snapshots import build_snapshot_backfill, missing_range, up_to_date

    cfg = _copy(lake_root, tmp_path, "backfill", "local")
    raw = cfg.lake().table("raw_events/cdnow_purchases")
    # every raw day through 01-12 validated (a snapshot reads all earlier days); 01-13 landed but not
    # validated: not in the range
    for ds in day_range(raw.first_ds(), "2024-01-12"):
        validate_partition(cfg, "raw_events", ds, source="cdnow_purchases", alert=False)
    assert not raw.validated("2024-01-13")
    assert missing_range(cfg, "2024-01-09", FS) == list(day_range("2024-01-09", "2024-01-12"))
    assert missing_range(cfg, "2024-01-09", FS, max_days=2) == ["2024-01-09", "2024-01-10"]
    first = build_snapshot_backfill(cfg, "2024-01-09", FS)
    table = snapshot_table(cfg.lake(), cfg.repo().feature_set(FS))
    assert first.ds == "2024-01-09" and table.partitions() == list(day_range("2024-01-09", "2024-01-12"))
    assert all(up_to_date(cfg, ds, FS) for ds in day_range("2024-01-09", "2024-01-12"))
    # the next run finds its day up to date: the same manifest comes back, nothing is rewritten
    again = build_snapshot_backfill(cfg, "2024-01-10", FS)
    assert again == table.manifest("2024-01-10")
    # a re-landed raw day makes its snapshot (and every later one) stale again
    raw.write_partition("2024-01-10", raw.read("2024-01-10").iloc[1:], producer={"job": "test"})
    assert up_to_date(cfg, "2024-01-10", FS)  # a re-land of a validated day is staged: readers keep the old one
    raw.promote("2024-01-10", raw.pending("2024-01-10").write_id)
    assert not up_to_date(cfg, "2024-01-10", FS) and not up_to_date(cfg, "2024-01-11", FS)
    assert up_to_date(cfg, "2024-01-09", FS)
    # the build of 01-10 is its own day plus the validated raw days after it whose snapshot went stale
    assert missing_range(cfg, "2024-01-10", FS) == ["2024-01-10", "2024-01-11", "2024-01-12"]


def test_a_backfill_refuses_unvalidated_raw_days_unless_told(lake_root, tmp_path):
    from jobs.lake import UNVALIDATED_INPUTS, UnvalidatedPartitionError
    from jobs.snapshots import build_snapshot_backfill

    cfg = _copy(lake_root, tmp_path, "unvalidated", "local")
    raw = cfg.lake().table("raw_events/cdnow_purchases")
    with pytest.raises(UnvalidatedPartitionError) as err:
        build_snapshot_backfill(cfg, "2024-01-09", FS)
    assert str(err.value).startswith(
        f"table '{raw.name}' ds={raw.first_ds()}..2024-01-09: not validated (run `lockstep validate raw_events "
    )
    assert "--allow-unvalidated (allow_unvalidated=True)" in str(err.value)
    table = snapshot_table(cfg.lake(), cfg.repo().feature_set(FS))
    assert table.partitions() == []
    m = build_snapshot_backfill(cfg, "2024-01-09", FS, allow_unvalidated=True)  # threaded to the build
    assert table.partitions() == ["2024-01-09"] and m.producer[UNVALIDATED_INPUTS][-1] == f"{raw.name}/ds=2024-01-09"
