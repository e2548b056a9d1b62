"""Issue 15 item 5: validation is a property of the partition that snapshot builds require, and quarantine
follows lineage (raw day -> every later snapshot that read it -> the predictions scored from them -> their
SQL rows), with one alert naming everything withdrawn."""

import json

import numpy as np
import pandas as pd
import pytest

from features import registry as feature_registry
from features import repo
from jobs.alerts import Notifier
from jobs.cli import main
from jobs.config import Config
from jobs.ingest.cdnow import ingest_cdnow
from jobs.lake import UNVALIDATED_INPUTS, MissingPartitionError, UnvalidatedPartitionError
from jobs.quality.validate import validate_range
from jobs.scoring import sql
from jobs.scoring.batch import predictions_table
from jobs.snapshots import build_snapshot, snapshot_table

FS = feature_registry.get("customer_activity_v1")
MODEL = repo.load().model("repurchase_90d")
RAW = "raw_events/cdnow_purchases"
DAYS = ["1997-01-01", "1997-01-02", "1997-01-03", "1997-01-04", "1997-01-05"]


def _lake(tmp_path):
    cfg = Config(lake_root=str(tmp_path / "lake"))
    ingest_cdnow(cfg.lake(), DAYS[0], DAYS[-1])
    return cfg


def test_an_unvalidated_raw_day_is_refused_and_the_override_is_recorded(tmp_path):
    cfg = _lake(tmp_path)
    raw, snaps = cfg.lake().table(RAW), snapshot_table(cfg.lake(), FS)
    validate_range(cfg, "raw_events", DAYS[0], DAYS[1], source="cdnow_purchases", docs=False)
    with pytest.raises(UnvalidatedPartitionError) as err:
        build_snapshot(cfg, "1997-01-04", allow_unvalidated=False)
    assert str(err.value).startswith(
        f"table '{RAW}' ds=1997-01-03..1997-01-04: not validated (run `lockstep validate raw_events --table {RAW} "
        "--ds 1997-01-03 --to 1997-01-04`)"
    )
    assert snaps.partitions() == []  # nothing published
    # the override builds it, and the manifest says which inputs were not validated
    m = build_snapshot(cfg, "1997-01-04", allow_unvalidated=True)
    assert m.producer[UNVALIDATED_INPUTS] == [f"{RAW}/ds=1997-01-03", f"{RAW}/ds=1997-01-04"]
    # ... and such a partition is never taken as good: a passing validation does not mark it validated
    validate_range(cfg, "feature_snapshots", "1997-01-04", feature_set=FS.name, docs=False)
    assert not snaps.validated("1997-01-04")
    # once its inputs are validated, the default build works and carries no such mark
    validate_range(cfg, "raw_events", DAYS[2], DAYS[3], source="cdnow_purchases", docs=False)
    assert raw.unvalidated(DAYS[0], DAYS[3]) == []
    good = build_snapshot(cfg, "1997-01-04", allow_unvalidated=False)
    assert UNVALIDATED_INPUTS not in good.producer and good.content_fingerprint == m.content_fingerprint


def _predictions(cfg, ds, seed):
    """A predictions partition of day ``ds`` recording the snapshot it was scored from (as score_snapshot does)."""
    snap = snapshot_table(cfg.lake(), FS)
    ids = snap.read(ds, columns=[FS.entity])[FS.entity].to_numpy(dtype=np.int64)
    frame = pd.DataFrame(
        {
            "customer_id": ids,
            "score": np.random.default_rng(seed).random(len(ids)),
            "model_name": MODEL.name,
            "model_version": 1,
            "role": "champion",
            "feature_set_fingerprint": FS.fingerprint,
            "scored_at": pd.Timestamp(ds, tz="UTC") + pd.Timedelta(days=1),
        }
    )
    inputs = {f"{snap.name}/ds={ds}": snap.manifest(ds).content_fingerprint}
    return predictions_table(cfg.lake(), MODEL).write_partition(
        ds, frame, producer={"job": "test", "models": []}, inputs=inputs
    )


def test_quarantining_a_raw_day_withdraws_what_was_built_from_it(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(sql.SQL_ENV, raising=False)
    monkeypatch.delenv("LOCKSTEP_ALERTS_LOG", raising=False)
    cfg = _lake(tmp_path)
    lake = cfg.lake()
    validate_range(cfg, "raw_events", DAYS[0], DAYS[-1], source="cdnow_purchases", docs=False)
    snaps, preds = snapshot_table(lake, FS), predictions_table(lake, MODEL)
    for ds, seed in (("1997-01-02", 1), ("1997-01-03", 2), ("1997-01-05", 3)):
        build_snapshot(cfg, ds, allow_unvalidated=False)
        _predictions(cfg, ds, seed)
        validate_range(cfg, "predictions", ds, model=MODEL.name, docs=False)  # publish requires it
        sql.publish_predictions(cfg, ds, MODEL.name)
    url = sql.sql_url(cfg)
    preds_rows = {d: preds.manifest(d).rows for d in ("1997-01-03", "1997-01-05")}
    kept_rows = sql.read_day(url, "1997-01-02")
    assert len(kept_rows) > 0 and len(sql.read_day(url, "1997-01-05")) > 0
    kept_snapshot = snaps.manifest("1997-01-02")

    argv = ["--lake", cfg.lake_root, "quarantine", "--table", RAW, "--ds", "1997-01-03", "--reason", "prices doubled"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    withdrawn = [f"{t}/ds={d}" for t in (snaps.name, preds.name) for d in ("1997-01-03", "1997-01-05")]
    assert out.startswith(f"{RAW}/ds=1997-01-03 quarantined: prices doubled\n")
    assert "withdrew 4 partition(s) built from it:" in out
    assert all(w in out for w in withdrawn)

    # the raw day, the two later snapshots and their predictions are gone: readers fail loudly
    assert lake.table(RAW).partitions() == ["1997-01-01", "1997-01-02", "1997-01-04", "1997-01-05"]
    for table in (snaps, preds):
        for ds in ("1997-01-03", "1997-01-05"):
            with pytest.raises(MissingPartitionError, match=f"has no published partition for ds {ds}"):
                table.read(ds)
        assert table.partitions() == ["1997-01-02"]
        (q,) = table.quarantined("1997-01-05")
        reason = json.loads(lake.fs.cat_file(f"{q}/_reason.json"))["reason"]
        assert reason == f"input {RAW}/ds=1997-01-03 quarantined: prices doubled"
    # their SQL days are deleted; the day built before the quarantined one is untouched
    assert sql.read_day(url, "1997-01-03").empty and sql.read_day(url, "1997-01-05").empty
    pd.testing.assert_frame_equal(sql.read_day(url, "1997-01-02"), kept_rows)
    assert snaps.manifest("1997-01-02") == kept_snapshot

    # one alert naming everything withdrawn
    (alert,) = [a for a in Notifier.for_lake(lake).read() if a["what"] == "lineage withdrawal"]
    assert alert["partition"] == f"{RAW}/ds=1997-01-03"
    assert alert["details"]["withdrawn"] == withdrawn
    assert alert["reason"].startswith(
        "withdrawn: every partition whose inputs cover this day, ranges included: a build"
    )
    assert f"{preds.name}/ds=1997-01-05 -> " in alert["reason"]
    deleted = alert["details"]["sql_rows_deleted"]
    assert deleted == {f"{MODEL.sql_table_name} ds={d}": preds_rows[d] for d in ("1997-01-03", "1997-01-05")}
    assert f"deleted {preds_rows['1997-01-05']} SQL row(s) of {MODEL.sql_table_name} ds=1997-01-05" in out


def test_a_failed_validation_of_a_published_day_withdraws_what_was_built_from_it(tmp_path, monkeypatch):
    """The day a snapshot was built from (with the override) fails validation later: the quarantine
    withdraws that snapshot too, the error says so, and the one alert names it."""
    from jobs.quality.validate import DataQualityError, validate_partition

    monkeypatch.delenv("LOCKSTEP_ALERTS_LOG", raising=False)
    cfg = _lake(tmp_path)
    lake = cfg.lake()
    raw, snaps = lake.table(RAW), snapshot_table(lake, FS)
    validate_range(cfg, "raw_events", DAYS[0], DAYS[3], source="cdnow_purchases", docs=False)
    bad = raw.read(DAYS[4]).assign(amount=-5.0)  # the declaration says amount >= 0
    raw.write_partition(DAYS[4], bad, producer={"job": "re-export"})  # never validated: published at once
    kept = build_snapshot(cfg, DAYS[3], allow_unvalidated=False)
    built = build_snapshot(cfg, DAYS[4], allow_unvalidated=True)
    assert built.producer[UNVALIDATED_INPUTS] == [f"{RAW}/ds={DAYS[4]}"]
    with pytest.raises(DataQualityError) as info:
        validate_partition(cfg, "raw_events", DAYS[4], source="cdnow_purchases", docs=False)
    msg = str(info.value) + "\n".join(getattr(info.value, "__notes__", []))
    assert "amount" in msg
    assert f"withdrew 1 partition(s) built from it:\n  {snaps.name}/ds={DAYS[4]} -> " in msg
    assert not raw.exists(DAYS[4]) and not snaps.exists(DAYS[4])
    assert snaps.manifest(DAYS[3]) == kept  # built from validated days before it: untouched
    (q,) = snaps.quarantined(DAYS[4])
    reason = json.loads(lake.fs.cat_file(f"{q}/_reason.json"))["reason"]
    assert reason.startswith(
        f"input {RAW}/ds={DAYS[4]} quarantined: data quality raw_events {RAW}/ds={DAYS[4]}: FAILED"
    )
    (alert,) = [a for a in Notifier.for_lake(lake).read() if a["partition"] == f"{RAW}/ds={DAYS[4]}"]
    assert alert["details"]["withdrawn"] == [f"{snaps.name}/ds={DAYS[4]}"]
    assert alert["details"]["rejected_candidates"] == []  # nothing was staged over a validated version


def test_quarantine_of_a_partition_that_never_existed_is_a_clear_error(tmp_path, capsys):
    argv = ["--lake", str(tmp_path / "lake"), "quarantine", "--table", RAW, "--ds", "1997-01-01", "--reason", "x"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"table '{RAW}' ds=1997-01-01: no published or quarantined partition to withdraw" in err


def test_withdrawing_a_raw_day_rejects_the_pending_candidates_built_from_it(tmp_path, monkeypatch):
    """A snapshot re-build staged over its validated version (pending, not yet validated) that read the
    quarantined raw day is rejected with the published version, so no later validation can promote it;
    a candidate built before that day and the quarantined day's own re-delivery stay pending."""
    from jobs.quality.validate import validate_partition

    monkeypatch.delenv("LOCKSTEP_ALERTS_LOG", raising=False)
    cfg = _lake(tmp_path)
    lake = cfg.lake()
    raw, snaps = lake.table(RAW), snapshot_table(lake, FS)
    validate_range(cfg, "raw_events", DAYS[0], DAYS[-1], source="cdnow_purchases", docs=False)
    for ds in (DAYS[1], DAYS[3]):
        build_snapshot(cfg, ds)
        assert validate_partition(cfg, "feature_snapshots", ds, feature_set=FS.name, docs=False).success
        build_snapshot(cfg, ds)  # a re-build over the validated day: staged
        assert snaps.pending(ds) is not None
    raw.write_partition(DAYS[2], raw.read(DAYS[2]), producer={"job": "re-delivery"})
    own = raw.pending(DAYS[2])
    assert own is not None

    argv = ["--lake", cfg.lake_root, "quarantine", "--table", RAW, "--ds", DAYS[2], "--reason", "prices doubled"]
    assert main(argv) == 0

    # the candidate of DAYS[3] (it read raw DAYS[0..3]) is in the quarantine, not pending
    assert snaps.pending(DAYS[3]) is None and not snaps.exists(DAYS[3])
    urls = snaps.quarantined(DAYS[3])
    assert len(urls) == 2  # the published version and the candidate
    reasons = {json.loads(lake.fs.cat_file(f"{q}/_reason.json"))["reason"] for q in urls}
    assert reasons == {f"input {RAW}/ds={DAYS[2]} quarantined: prices doubled"}
    with pytest.raises(MissingPartitionError):  # nothing left for a validation to promote
        validate_partition(cfg, "feature_snapshots", DAYS[3], feature_set=FS.name, docs=False)
    # the snapshot built before the day and its candidate, and the day's own re-delivery, are untouched
    assert snaps.validated(DAYS[1]) and snaps.pending(DAYS[1]) is not None
    assert raw.pending(DAYS[2]) is not None and raw.pending(DAYS[2]).write_id == own.write_id
    (alert,) = [a for a in Notifier.for_lake(lake).read() if a["what"] == "lineage withdrawal"]
    assert alert["details"]["rejected_candidates"] == [f"{snaps.name}/ds={DAYS[3]}"]
    assert (
        f"rejected 1 pending candidate(s) built from withdrawn input:\n  {snaps.name}/ds={DAYS[3]} -> "
        in (alert["reason"])
    )
