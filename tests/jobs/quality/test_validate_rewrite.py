"""Re-writing a validated day (issue 15 item 6, "good data lost"): for every table kind, a bad re-write of
day D is staged, fails validation, is quarantined and alerted, and readers keep the previous good version;
a good re-write replaces it once validated. The writers are the real ones where a bad version can come out
of them (landing a re-export, a snapshot build, the serving-log publish); training sets and predictions are
written as their jobs write them in the DAG (``write_partition`` without a gate, then the validate task)."""

from __future__ import annotations

import gzip
import json
import os

import pandas as pd
import pytest
from test_validate_support import FS, alerts, predictions_frame, serving_frame, snapshot_frame, training_frame

from jobs.ingest.cdnow import CDNOW_PATH
from jobs.ingest.landing import land
from jobs.lake import Lake, Table, write_id
from jobs.quality.validate import RESULT_FILE, DataQualityError, validate_partition
from jobs.schemas import feature_schema
from jobs.serving.log import publish
from jobs.snapshots import build_snapshot

pytest_plugins = ["test_validate_support"]  # fixtures: cdnow, cfg, history, clean_alert_env
pytestmark = pytest.mark.usefixtures("clean_alert_env")

MODEL = "repurchase_90d"


def fingerprint(table: Table, ds: str) -> str:
    """The content fingerprint of what readers get for ``ds``, recomputed from the rows they read."""
    again = Lake(table.lake.root + "-check").table(table.name)
    rows = table.dataset(ds).to_table()  # what Table.read returns, in the stored Arrow schema
    assert rows.to_pandas().equals(table.read(ds))
    return again.write_partition(ds, rows, producer={"job": "check"}).content_fingerprint


# ---- one writer per table kind: write(cfg, ds, bad) -> the table written ----------------------------------
def land_cdnow(cfg, ds, bad, tmp_path):
    """Land day ``ds`` of CDNOW with the real lander, from the shipped log or a re-export in which one
    purchase of ``ds`` has 5000 CDs (the parser accepts it; the suite's n_items range does not)."""
    path = None
    if bad:
        lines = gzip.decompress(CDNOW_PATH.read_bytes()).decode().splitlines()
        day = ds.replace("-", "")
        n = next(i for i, line in enumerate(lines) if line.split()[1:2] == [day])
        fields = lines[n].split()
        lines[n] = " ".join([fields[0], fields[1], "5000", fields[3]])
        path = tmp_path / "CDNOW_reexport.txt"
        path.write_text("\n".join(lines) + "\n")
    land(cfg, "cdnow_purchases", ds, path=None if path is None else str(path))
    return cfg.lake().table(FS.source.table)


def build_cdnow_snapshot(cfg, ds, bad):
    """The real snapshot job; the bad build is an engine that returns negative counts."""
    from jobs import engines

    real = engines.run

    def broken(*args, **kwargs):
        for frame in real(*args, **kwargs):
            frame = frame.copy()
            frame["txn_count_30d"] = -frame["txn_count_30d"] - 1
            yield frame

    with pytest.MonkeyPatch.context() as mp:
        if bad:
            mp.setattr(engines, "run", broken)
        build_snapshot(cfg, ds, FS.name)
    return cfg.lake().table(f"feature_snapshots/{FS.name}")


def write_training_set(cfg, ds, bad, cdnow):
    frame = training_frame(cdnow, ds)
    if bad:
        frame.loc[:9, "label"] = 7  # not a 0/1 label
    table = cfg.lake().table(cfg.repo().model(MODEL).training_table, feature_schema(FS, [("label", "int8")]))
    producer = {"job": "build_training_set", "model": MODEL, "feature_set_fingerprint": FS.fingerprint}
    table.write_partition(ds, frame, producer=producer)
    return table


def write_predictions(cfg, ds, bad, cdnow):
    preds = predictions_frame(snapshot_frame(cdnow, ds), ds)
    if bad:
        preds.loc[[0, 5], "score"] = [1.7, -0.2]  # raw margins published as probabilities
    table = cfg.lake().table("predictions")
    table.write_partition(ds, preds, producer={"job": "score_snapshot"})
    return table


def publish_serving_log(cfg, ds, bad, cdnow, tmp_path):
    """The real nightly publish from a WAL segment; the bad one logged a stale feature-set fingerprint."""
    logs = serving_frame(cdnow, ds).to_pandas()
    if bad:
        logs.loc[logs.index[-4:], "feature_set_fingerprint"] = "customer_activity_v2:feedfacefeedface"
    for col in ("request_time", "served_at"):
        logs[col] = logs[col].astype("datetime64[us, UTC]").astype("int64")
    wal = tmp_path / ("wal-bad" if bad else "wal-good")
    wal.mkdir(exist_ok=True)
    records = json.loads(logs.to_json(orient="records"))
    (wal / "segment-000001.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    model = cfg.repo().model(MODEL)
    publish(cfg, str(wal), model, ds)
    return cfg.lake().table(model.serving_log_table)


KINDS = {
    # dataset: (declaration kwargs, ds, the rule the bad version breaks)
    "raw_events": ({"source": "cdnow_purchases"}, "1997-01-03", "expect_column_values_to_be_between(column=n_items"),
    "feature_snapshots": (
        {"feature_set": FS.name},
        "1997-01-03",
        "expect_column_values_to_be_between(column=txn_count_30d",
    ),
    "training_sets": ({"model": MODEL}, "1997-03-03", "expect_column_values_to_be_in_set(column=label"),
    "predictions": ({"model": MODEL}, "1997-03-10", "expect_column_values_to_be_between(column=score"),
    "serving_logs": (
        {"model": MODEL},
        "1997-03-04",
        "expect_column_values_to_be_in_set(column=feature_set_fingerprint",
    ),
}


@pytest.fixture
def writer(request, cfg, cdnow, tmp_path):
    dataset = request.param
    if dataset in ("raw_events", "feature_snapshots"):
        land(cfg, "cdnow_purchases", "1997-01-01", "1997-01-02")  # history before the day under test
    writers = {
        "raw_events": lambda ds, bad: land_cdnow(cfg, ds, bad, tmp_path),
        "feature_snapshots": lambda ds, bad: build_cdnow_snapshot(cfg, ds, bad),
        "training_sets": lambda ds, bad: write_training_set(cfg, ds, bad, cdnow),
        "predictions": lambda ds, bad: write_predictions(cfg, ds, bad, cdnow),
        "serving_logs": lambda ds, bad: publish_serving_log(cfg, ds, bad, cdnow, tmp_path),
    }
    if dataset == "feature_snapshots":
        land(cfg, "cdnow_purchases", "1997-01-03")
        # a snapshot is built from validated raw days (land -> validate -> build, as the DAG runs)
        for d in ("1997-01-01", "1997-01-02", "1997-01-03"):
            assert validate_partition(cfg, "raw_events", d, source="cdnow_purchases", docs=False).success
    return dataset, writers[dataset]


@pytest.mark.parametrize("writer", list(KINDS), indirect=True)
def test_a_bad_rewrite_of_a_validated_day_keeps_the_good_version(cfg, writer):
    dataset, write = writer
    names, ds, rule = KINDS[dataset]
    table = write(ds, bad=False)
    assert validate_partition(cfg, dataset, ds, **names).success
    good = table.manifest(ds)
    good_content = fingerprint(table, ds)
    assert good_content == good.content_fingerprint

    table = write(ds, bad=True)
    # staged: readers still get the validated version, and the candidate is there to validate
    assert table.manifest(ds) == good and fingerprint(table, ds) == good_content
    candidate = table.pending(ds)
    assert candidate is not None and candidate.manifest.content_fingerprint != good.content_fingerprint
    with pytest.raises(DataQualityError) as info:
        validate_partition(cfg, dataset, ds, **names)
    err, msg = info.value, str(info.value)
    assert msg.startswith(f"data quality {dataset} {table.name}/ds={ds}: FAILED"), msg
    assert rule in msg, msg
    assert f"quarantined: {err.quarantine_path}" in msg
    assert f"kept: {table.name}/ds={ds} stays at its validated version {good.content_fingerprint[:16]}" in msg
    # the candidate is in the quarantine with its manifest and verdict; the good version is untouched
    with open(os.path.join(err.quarantine_path, "_manifest.json")) as fh:
        assert json.load(fh)["content_fingerprint"] == candidate.manifest.content_fingerprint
    with open(os.path.join(err.quarantine_path, RESULT_FILE)) as fh:
        assert json.load(fh)["success"] is False
    assert table.quarantined(ds) == [err.quarantine_path]
    assert table.pending(ds) is None
    assert table.exists(ds) and table.manifest(ds) == good and table.partitions()[-1] == ds
    assert fingerprint(table, ds) == good_content
    assert [f.rsplit("/", 1)[-1] for f in table.files(ds)] == [f["name"] for f in good.files]
    (line,) = [a for a in alerts(cfg) if a["partition"] == f"{table.name}/ds={ds}"]
    assert (line["dataset"], line["quarantine"]) == (dataset, err.quarantine_path)
    assert any(rule in f for f in line["failed"]), line["failed"]

    # a good re-write is staged too, and replaces the good version once it passes
    table = write(ds, bad=False)
    assert table.manifest(ds) == good and table.pending(ds) is not None
    result = validate_partition(cfg, dataset, ds, **names)
    assert result.success and table.pending(ds) is None
    now = table.manifest(ds)
    assert now.content_fingerprint == good_content and now.files != good.files  # a new write of the same rows
    assert fingerprint(table, ds) == good_content
    on_disk = set(os.listdir(table.partition_path(ds)))  # the replaced version and the candidate are gone
    assert on_disk == {
        "_manifest.json",
        RESULT_FILE,
        f"_validated-{write_id(now)}.json",
        *(f["name"] for f in now.files),
    }
    assert table.validated(ds)
    with open(os.path.join(table.partition_path(ds), RESULT_FILE)) as fh:
        assert json.load(fh)["manifest"]["files"] == now.files


def test_a_failed_first_version_is_quarantined_and_not_visible(cfg, cdnow):
    """No validated version to keep: the first write is visible at once (as before) and a failed
    validation takes it out of the table."""
    table = write_predictions(cfg, "1997-03-10", True, cdnow)
    assert table.exists("1997-03-10") and table.pending("1997-03-10") is None
    with pytest.raises(DataQualityError) as info:
        validate_partition(cfg, "predictions", "1997-03-10", model=MODEL)
    assert "kept:" not in str(info.value)
    assert not table.exists("1997-03-10") and table.quarantined("1997-03-10") == [info.value.quarantine_path]


def test_report_only_validation_leaves_a_failed_candidate_pending(cfg, cdnow):
    ds = "1997-03-10"
    table = write_predictions(cfg, ds, False, cdnow)
    validate_partition(cfg, "predictions", ds, model=MODEL)
    good = table.manifest(ds)
    write_predictions(cfg, ds, True, cdnow)
    result = validate_partition(
        cfg, "predictions", ds, model=MODEL, quarantine=False, alert=False, raise_on_failure=False
    )
    assert not result.success and result.quarantine_path is None and result.result_path is None
    with open(os.path.join(table.partition_path(ds), RESULT_FILE)) as fh:  # still the good version's verdict
        stored = json.load(fh)
    assert stored["success"] is True and stored["manifest"]["content_fingerprint"] == good.content_fingerprint
    assert table.manifest(ds) == good and table.pending(ds) is not None and table.quarantined(ds) == []
    assert result.manifest["content_fingerprint"] == table.pending(ds).manifest.content_fingerprint
    assert alerts(cfg) == []


def test_a_gated_write_counts_as_validated_and_protects_the_day(cfg, cdnow):
    """Jobs run with their own gate (``validate=True``) publish only what passed, so the next plain
    re-write of that day is staged."""
    from jobs.quality.validate import gate_for

    ds = "1997-03-10"
    table = cfg.lake().table("predictions")
    preds = predictions_frame(snapshot_frame(cdnow, ds), ds)
    good = table.write_partition(ds, preds, producer={"job": "score"}, gate=gate_for(cfg, "predictions"))
    assert table.validated(ds)
    write_predictions(cfg, ds, True, cdnow)
    assert table.manifest(ds) == good and table.pending(ds) is not None
    with pytest.raises(DataQualityError):
        validate_partition(cfg, "predictions", ds, model=MODEL)
    assert table.manifest(ds) == good and pd.Series(table.read(ds)["score"]).between(0, 1).all()


def test_a_corrupt_candidate_fails_validation_and_the_good_version_stays(cfg, cdnow):
    ds = "1997-03-10"
    table = write_predictions(cfg, ds, False, cdnow)
    validate_partition(cfg, "predictions", ds, model=MODEL)
    good = table.manifest(ds)
    write_predictions(cfg, ds, False, cdnow)  # the same rows, but a file is damaged before validation
    (path,) = table.pending(ds).files
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) - 7)
    with pytest.raises(DataQualityError) as info:
        validate_partition(cfg, "predictions", ds, model=MODEL)
    msg = str(info.value)
    assert f"CorruptPartitionError: table 'predictions' ds={ds}: file {path}: size is" in msg, msg
    assert table.manifest(ds) == good and table.pending(ds) is None
    assert table.quarantined(ds) == [info.value.quarantine_path]
    assert os.path.basename(path) in os.listdir(info.value.quarantine_path)


def test_a_range_validates_a_pending_candidate_of_a_day_with_no_published_version(cfg, cdnow):
    from jobs.quality.validate import validate_range

    ds = "1997-03-10"
    table = write_predictions(cfg, ds, False, cdnow)
    validate_partition(cfg, "predictions", ds, model=MODEL)
    write_predictions(cfg, ds, False, cdnow)
    table.quarantine(ds, "taken back by an operator")  # the published version only: the candidate stays
    assert not table.exists(ds) and table.pending(ds) is not None
    (result,) = validate_range(cfg, "predictions", ds, ds, model=MODEL)
    assert result.success and table.exists(ds) and table.pending(ds) is None and table.validated(ds)
