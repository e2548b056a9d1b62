"""`airflow dags test` of each DAG on CDNOW dates: the real jobs run and publish their partitions."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.airflow, pytest.mark.timeout(900)]

SNAPSHOTS = "feature_snapshots/customer_activity_v1"
RAW = "raw_events/cdnow_purchases"
FEATURES, TRAINING, SCORING = (
    "features_daily__cdnow_purchases",
    "training__repurchase_90d",
    "batch_scoring__repurchase_90d",
)


def test_features_daily_lands_and_snapshots_the_day(airflow_local, lake):
    for ds in ("1997-01-01", "1997-01-02"):
        airflow_local.dags_test(FEATURES, ds)
        raw = lake.table(RAW).manifest(ds)
        snap = lake.table(SNAPSHOTS).manifest(ds)
        assert raw.rows > 0 and snap.rows > 0
        # The snapshot of D covers every customer known at D+1 00:00: at least the day's buyers.
        assert snap.rows >= lake.table(RAW).read(ds)["customer_id"].nunique()
    assert lake.table(SNAPSHOTS).partitions() == ["1997-01-01", "1997-01-02"]


def test_a_backfill_run_builds_the_landed_range_in_one_pass_and_later_runs_skip(airflow_local, lake):
    """Raw history landed and validated first (``lockstep land`` + ``validate``): the backfill's first run
    builds every missing snapshot after it in one pass; the next run finds its day up to date."""
    from jobs import orchestration as o
    from jobs.config import Config
    from jobs.quality.validate import validate_partition

    cfg = Config(lake_root=airflow_local.lake)
    snaps = lake.table(SNAPSHOTS)
    for ds in ("1997-01-01", "1997-01-02"):  # the run of 01-03 needs its past (depends_on_past)
        if not snaps.exists(ds):  # (before 01-03.. is landed, or this run would build the range itself)
            airflow_local.dags_test(FEATURES, ds)
    for ds in ("1997-01-03", "1997-01-04", "1997-01-05", "1997-01-06"):  # `lockstep land` + `validate`
        o.land_day(cfg, "cdnow_purchases", ds)
        validate_partition(cfg, "raw_events", ds, source="cdnow_purchases", alert=False)
    assert not any(snaps.exists(d) for d in ("1997-01-03", "1997-01-04", "1997-01-05", "1997-01-06"))
    airflow_local.dags_test(FEATURES, "1997-01-03")
    built = {d: snaps.manifest(d) for d in ("1997-01-03", "1997-01-04", "1997-01-05", "1997-01-06")}
    assert all(snaps.validated(d) for d in built)
    assert not snaps.exists("1997-01-07")  # its raw day is not landed: the range stops before it
    airflow_local.dags_test(FEATURES, "1997-01-04")
    assert snaps.manifest("1997-01-04") == built["1997-01-04"]  # skipped: nothing rewritten


def test_a_bad_reland_of_a_validated_day_fails_and_readers_keep_the_good_day(airflow_local, lake, tmp_path):
    """land_raw stages the re-export over the validated day, validate_raw quarantines it: the day's raw
    partition and its snapshot stay the validated ones; a good re-run is swapped in by validate_raw."""
    import gzip

    from jobs.ingest.cdnow import CDNOW_PATH

    ds = "1997-01-01"
    raw, snaps = lake.table(RAW), lake.table(SNAPSHOTS)
    if not (raw.validated(ds) and snaps.validated(ds)):  # (the first test's run of this day left them so)
        airflow_local.dags_test(FEATURES, ds)
    good_raw, good_snap = raw.manifest(ds), snaps.manifest(ds)
    assert raw.validated(ds) and snaps.validated(ds)
    lines = gzip.decompress(CDNOW_PATH.read_bytes()).decode().splitlines()
    n = next(i for i, line in enumerate(lines) if line.split()[1:2] == [ds.replace("-", "")])
    fields = lines[n].split()
    lines[n] = " ".join([fields[0], fields[1], "5000", fields[3]])  # 5000 CDs: the parser takes it, the suite not
    bad = tmp_path / "CDNOW_reexport.txt"
    bad.write_text("\n".join(lines) + "\n")
    proc = airflow_local.dags_test(FEATURES, ds, conf={"path": str(bad)}, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and f"data quality raw_events {RAW}/ds={ds}: FAILED" in out, out[-3000:]
    assert raw.manifest(ds) == good_raw and snaps.manifest(ds) == good_snap
    assert raw.pending(ds) is None and len(raw.quarantined(ds)) == 1
    assert raw.read(ds)["n_items"].max() < 5000
    airflow_local.dags_test(FEATURES, ds)  # the declared input again: staged, validated, swapped in
    now = raw.manifest(ds)
    assert now.content_fingerprint == good_raw.content_fingerprint and now.files != good_raw.files
    assert raw.pending(ds) is None and raw.validated(ds) and snaps.validated(ds)
    assert snaps.manifest(ds).content_fingerprint == good_snap.content_fingerprint


def test_a_bad_engine_fails_the_run_before_any_task(airflow_local, lake):
    proc = airflow_local.dags_test(FEATURES, "1997-01-20", conf={"engine": "flink"}, check=False)
    assert proc.returncode != 0
    assert "flink" in proc.stdout + proc.stderr
    assert not lake.table(RAW).exists("1997-01-20")


# ---- training and batch scoring need mature labels: nine months of CDNOW history landed --------------
TRAINING_CONF = {"train_weeks": 2, "valid_weeks": 1, "holdback_weeks": 1, "embargo_days": 0, "rounds": 30}
#: The history landed and validated: the source's first day .. LAST_DAY (not its whole span: every day of
#: it is validated, and the tests need only what the latest mature cut-offs read — the training sets all
#: days up to each cut-off, the 90-day labels the days after it — so the cut-offs are 1997-06-09 .. 06-30).
LAST_DAY = "1997-09-30"
SCORE_DAY = "1997-09-30"


@pytest.fixture(scope="module")
def history(tmp_path_factory, new_airflow):
    from jobs.config import Config
    from jobs.ingest.landing import land
    from jobs.quality.validate import validate_range

    root = tmp_path_factory.mktemp("history")
    af = new_airflow(root)
    cfg = Config(lake_root=str(root / "lake"))
    span = (cfg.repo().source("cdnow_purchases").span[0], LAST_DAY)
    land(cfg, "cdnow_purchases", *span)
    # validated, as the features DAG leaves them: labels, training sets and snapshots refuse unvalidated
    # raw days
    validate_range(cfg, "raw_events", *span, source="cdnow_purchases", alert=False, docs=False)
    return af, cfg


def test_training_dag_trains_registers_and_promotes_a_champion(history):
    from jobs import orchestration as o
    from jobs.models.registry import CHAMPION, Registry
    from jobs.training.labels import latest_mature_cutoff

    af, cfg = history
    af.dags_test(TRAINING, conf=TRAINING_CONF)
    model = cfg.repo().model("repurchase_90d")
    window = o.training_window(model, TRAINING_CONF, None, latest_mature_cutoff(cfg, "repurchase_90d"))
    lake = cfg.lake()
    assert lake.table("labels/repurchase_90d").partitions() == window["cutoffs"]
    assert lake.table("training_sets/repurchase_90d").partitions() == window["cutoffs"]
    registry = Registry.from_config(cfg)
    champion = registry.alias("repurchase_90d", CHAMPION)
    assert champion is not None and champion.version == 1
    assert champion.metrics["holdback_auc"] > 0.5
    # the floor: the dask-ml baseline was trained on the same ranges and LightGBM beat it on validation
    baseline = registry.versions("repurchase_90d_baseline")[-1]
    assert baseline.flavor == "sgd_baseline" and baseline.metrics["valid_auc"] > 0.5
    assert champion.metrics["baseline_valid_auc"] == pytest.approx(baseline.metrics["valid_auc"])
    assert champion.metrics["valid_auc_lift_over_baseline"] > 0


def test_batch_scoring_dag_scores_the_snapshot_and_publishes_sql(history):
    from jobs.quality.validate import validate_partition
    from jobs.scoring.sql import read_day, sql_url
    from jobs.snapshots import build_snapshot

    af, cfg = history
    snap = build_snapshot(cfg, SCORE_DAY, "customer_activity_v1")  # the features DAG's job, run directly
    # ... but not its validate_snapshot task: scoring refuses the unvalidated snapshot, at once (no retries)
    proc = af.dags_test(SCORING, conf={"ds": SCORE_DAY}, check=False)
    out = proc.stdout + proc.stderr
    assert f"unvalidated input: table 'feature_snapshots/customer_activity_v1' ds={SCORE_DAY}: not validated" in out
    assert "--allow-unvalidated" in out and not cfg.lake().table("predictions").exists(SCORE_DAY)
    validate_partition(cfg, "feature_snapshots", SCORE_DAY, feature_set="customer_activity_v1", alert=False)
    af.dags_test(SCORING, conf={"ds": SCORE_DAY})
    preds = cfg.lake().table("predictions").manifest(SCORE_DAY)
    assert preds.rows == snap.rows  # the champion only: no challenger exists yet
    table = read_day(sql_url(cfg), SCORE_DAY)
    assert len(table) == snap.rows and set(table["role"]) == {"champion"}
    assert table["score"].between(0, 1).all()


def test_training_dag_with_tune_trains_the_searched_parameters(history):
    """Param ``tune``: the search runs (its report lands under the lake), train_and_register uses its best."""
    import json
    from pathlib import Path

    from jobs.models.registry import Registry

    af, cfg = history
    proc = af.dags_test(
        TRAINING, conf={**TRAINING_CONF, "tune": True, "tune_candidates": 3, "tune_max_rows": 5000, "tune_seed": 1}
    )
    reports = list((Path(cfg.lake_root) / "_reports" / "tuning" / "repurchase_90d").glob("*-seed1/summary.json"))
    assert len(reports) == 1, proc.stdout[-3000:]
    summary = json.loads(reports[0].read_text())
    assert summary["configs_tried_on_validation"] == 3 and summary["holdback_used"] is False
    latest = max(Registry.from_config(cfg).versions("repurchase_90d"), key=lambda v: v.version)
    booster = Registry.from_config(cfg).load("repurchase_90d", latest.version).booster
    best = summary["best_params"]
    assert booster.params["num_leaves"] == best["num_leaves"]
    assert booster.params["learning_rate"] == pytest.approx(best["learning_rate"])
