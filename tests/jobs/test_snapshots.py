"""Daily snapshots on the lake: CDNOW in, feature_snapshots/<set>/ds=D out."""

import shutil

import pandas as pd
import pytest

from features import registry
from features.kernel import compute, snapshot_queries
from jobs.config import Config
from jobs.ingest.cdnow import ingest_cdnow, read_cdnow
from jobs.lake import MissingPartitionError
from jobs.snapshots import build_snapshot, cutoff, snapshot_table

FS = registry.get("customer_activity_v1")


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    cfg = Config(lake_root=str(tmp_path_factory.mktemp("lake")))
    ingest_cdnow(cfg.lake(), "1997-01-01", "1997-04-30")
    return cfg


def test_snapshot_is_every_customer_as_known_at_the_next_midnight(cfg):
    m = build_snapshot(cfg, "1997-02-14", allow_unvalidated=True)
    got = snapshot_table(cfg.lake(), FS).read("1997-02-14").sort_values("customer_id", ignore_index=True)
    events = read_cdnow()
    events = events[events["ingested_at"] < cutoff("1997-02-14")]
    want = compute(events, snapshot_queries(events, FS, cutoff("1997-02-14")), FS)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert m.rows == events["customer_id"].nunique() == len(got)
    assert (got["as_of"] == pd.Timestamp("1997-02-15", tz="UTC")).all()
    # a purchase on the snapshot day itself is visible (ingested at 23:59:59.999999 that day)
    assert got["recency_days"].min() == 1.0


def test_manifest_carries_lineage_and_a_rerun_is_identical(cfg):
    first = build_snapshot(cfg, "1997-03-03", allow_unvalidated=True)
    again = build_snapshot(cfg, "1997-03-03", allow_unvalidated=True)
    assert first.content_fingerprint == again.content_fingerprint
    assert again.producer["feature_set_fingerprint"] == FS.fingerprint
    assert again.producer["as_of"] == "1997-03-04T00:00:00+00:00"
    [(name, fp)] = again.inputs.items()
    assert name == "raw_events/cdnow_purchases/ds=1997-01-01..1997-03-03" and len(fp) == 64


def test_a_missing_raw_partition_fails_loudly_naming_it(cfg, tmp_path):
    broken = Config(lake_root=str(tmp_path / "lake"))
    shutil.copytree(cfg.lake_root, broken.lake_root)
    (tmp_path / "lake" / "raw_events" / "cdnow_purchases" / "ds=1997-01-20" / "_manifest.json").unlink()
    with pytest.raises(MissingPartitionError, match="1997-01-20"):
        build_snapshot(broken, "1997-01-31", allow_unvalidated=True)
    assert not snapshot_table(broken.lake(), FS).exists("1997-01-31")


def test_snapshot_before_any_ingest_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no raw_events partitions at or before ds=1997-01-05"):
        build_snapshot(Config(lake_root=str(tmp_path)), "1997-01-05", allow_unvalidated=True)
