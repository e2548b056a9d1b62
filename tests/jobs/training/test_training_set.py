"""Point-in-time training sets on CDNOW: the kernel at the cut-off, label passthrough, no leakage."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from features import repo
from features.kernel import compute
from jobs.config import Config
from jobs.ingest.cdnow import iter_ingest_days, read_cdnow
from jobs.ingest.landing import land
from jobs.lake import LakeError, MissingPartitionError, write_id
from jobs.schemas import raw_schema, to_raw
from jobs.training.labels import build_labels, labels_table
from jobs.training.training_set import build_training_set, partitions_in, training_set_table

MODEL = repo.load().model("repurchase_90d")
FS = MODEL.feature_sets[0]
SOURCE = FS.source
HORIZON, CUTOFF = 28, "1997-02-03"
M28 = dataclasses.replace(MODEL, label=dataclasses.replace(MODEL.label, horizon_days=HORIZON))
C = pd.Timestamp(CUTOFF, tz="UTC")
LAST_DAY = "1997-03-02"  # the label horizon's last ingest day


def _lake_from_events(path, events) -> Config:
    cfg = Config(lake_root=str(path))
    table = cfg.lake().table(SOURCE.table, raw_schema(SOURCE))
    for ds, part in iter_ingest_days(events, "1997-01-01", LAST_DAY):
        table.write_partition(ds, to_raw(SOURCE, part), producer={"job": "test"})
    return cfg


@pytest.fixture(scope="module")
def events():
    ev = read_cdnow()
    return ev[ev["ingested_at"] < pd.Timestamp(LAST_DAY, tz="UTC") + pd.Timedelta(days=1)].reset_index(drop=True)


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    cfg = Config(lake_root=str(tmp_path_factory.mktemp("lake")))
    land(cfg, SOURCE.name, "1997-01-01", LAST_DAY)
    # land -> validate -> build, as the DAGs run: a training set built from unvalidated raw days is
    # never marked validated, and the stale-partition test below needs a validated one
    from jobs.quality.validate import validate_range

    validate_range(cfg, "raw_events", "1997-01-01", LAST_DAY, source=SOURCE.name, docs=False, alert=False)
    build_labels(cfg, M28, [CUTOFF])
    m = build_training_set(cfg, "repurchase_90d", CUTOFF, validate=True)
    assert "unvalidated_inputs" not in m.producer  # through the training_sets suite once
    return cfg


def _features(cfg) -> pd.DataFrame:
    return training_set_table(cfg.lake(), MODEL).read(CUTOFF).sort_values("customer_id", ignore_index=True)


def test_training_set_is_the_kernel_at_the_cutoff_with_the_label_passed_through(cfg, events):
    got = _features(cfg)
    labels = labels_table(cfg.lake(), MODEL).read(CUTOFF)
    want = compute(events[events["ingested_at"] < C], labels, FS, FS.training_mode)
    want = want.sort_values("customer_id", ignore_index=True)
    pd.testing.assert_frame_equal(got, want[got.columns.tolist()], check_exact=True)
    assert got.columns.tolist()[:3] == ["customer_id", "as_of", "label"]
    assert got.columns.tolist()[3:] == list(FS.feature_names)
    m = training_set_table(cfg.lake(), MODEL).manifest(CUTOFF)
    assert m.producer["feature_set_fingerprint"] == FS.fingerprint and m.producer["mode"] == "known_at"
    assert m.producer["feature_sets"] == [{"name": FS.name, "fingerprint": FS.fingerprint}]
    assert (
        m.inputs[f"labels/repurchase_90d/ds={CUTOFF}"]
        == labels_table(cfg.lake(), MODEL).manifest(CUTOFF).content_fingerprint
    )
    assert "raw_events/cdnow_purchases/ds=1997-01-01..1997-02-02" in m.inputs


def test_events_at_or_after_the_cutoff_do_not_change_features(cfg, events, tmp_path):
    rng = np.random.default_rng(7)
    ev = events.copy()
    late = ((ev["event_ts"] >= C) | (ev["ingested_at"] >= C)).to_numpy()
    assert late.sum() > 1000
    # shift every such event by 0..20 days (never before the cut-off), change what it says,
    # and add purchases after the cut-off for customers that had none
    shift = pd.to_timedelta(rng.integers(0, 21, late.sum()), unit="D")
    ev.loc[late, "event_ts"] = ev.loc[late, "event_ts"] + shift
    ev.loc[late, "ingested_at"] = ev.loc[late, "ingested_at"] + shift
    ev.loc[late, "amount"] = rng.uniform(1, 500, late.sum())
    ev.loc[late, "n_items"] = rng.integers(1, 9, late.sum())
    quiet = np.setdiff1d(ev.loc[ev["event_ts"] < C, "customer_id"].unique(), ev.loc[late, "customer_id"].unique())
    extra = pd.DataFrame(
        {
            "event_id": np.arange(len(quiet)) + 10_000_000,
            "customer_id": quiet,
            "event_ts": C + pd.Timedelta(days=3),
            "ingested_at": C + pd.Timedelta(days=3, hours=1),
            "n_items": 2,
            "amount": 30.0,
            "category": "standard",
        }
    )
    ev = pd.concat([ev, extra], ignore_index=True)
    ev = ev[ev["ingested_at"] < pd.Timestamp(LAST_DAY, tz="UTC") + pd.Timedelta(days=1)]
    shifted = _lake_from_events(tmp_path / "shifted", ev)
    build_labels(shifted, M28, [CUTOFF], allow_unvalidated=True)
    build_training_set(shifted, MODEL, CUTOFF, validate=False, allow_unvalidated=True)

    before, after = _features(cfg), _features(shifted)
    cols = ["customer_id", "as_of", *FS.feature_names]
    pd.testing.assert_frame_equal(before[cols], after[cols], check_exact=True)
    assert (before["label"] != after["label"]).sum() > 100  # the labels did see the change
    # the change is visible to features one day later: a leaking cut-off would have been caught
    q = before[["customer_id", "as_of"]].assign(as_of=C + pd.Timedelta(days=1))
    a = compute(events, q, FS)
    b = compute(ev, q, FS)
    assert not a[list(FS.feature_names)].equals(b[list(FS.feature_names)])


def test_a_missing_labels_partition_is_named(cfg):
    with pytest.raises(MissingPartitionError, match="1997-02-10"):
        build_training_set(cfg, MODEL, "1997-02-10", validate=False)


def test_training_ranges_refuse_missing_or_stale_partitions(cfg, tmp_path):
    lake = cfg.lake()
    assert [m.ds for m in partitions_in(lake, MODEL, "1997-01-01", "1997-02-28")] == [CUTOFF]
    with pytest.raises(ValueError, match="no labels/repurchase_90d partitions"):
        partitions_in(lake, MODEL, "1997-03-01", "1997-03-31")
    import shutil

    other = Config(lake_root=str(tmp_path / "copy"))
    shutil.copytree(cfg.lake_root, other.lake_root)
    table = training_set_table(other.lake(), MODEL)
    data = table.read(CUTOFF)
    stale = table.write_partition(CUTOFF, data, producer={"feature_set_fingerprint": "customer_activity_v1:0000"})
    # the day was validated, so the re-write is only staged: published as if a validate run had promoted it
    assert table.manifest(CUTOFF) != stale
    table.promote(CUTOFF, write_id(stale))
    with pytest.raises(LakeError, match="other versions of the feature sets of repurchase_90d"):
        partitions_in(other.lake(), MODEL, "1997-01-01", "1997-02-28")
    (tmp_path / "copy" / "training_sets" / MODEL.name / f"ds={CUTOFF}" / "_manifest.json").unlink()
    with pytest.raises(LakeError, match="no partition for labels cut-off"):
        partitions_in(other.lake(), MODEL, "1997-01-01", "1997-02-28")
