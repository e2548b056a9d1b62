"""`airflow dags test skew_nightly <D>` on a small CDNOW lake: a champion serves a replayed day, the DAG
publishes the serving log from the WAL, validates it and writes the skew report; a re-run keeps the log."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.airflow, pytest.mark.timeout(600)]

DAY = "1997-02-10"
LAST_RAW = "1997-02-13"  # DAY + late_days: the events that arrived after the requests
REQUESTS = 100
SKEW = "skew_nightly__repurchase_90d"


def _register_champion(cfg, fs, ds: str):
    """A small LightGBM on one snapshot, registered with lineage as the champion of repurchase_90d."""
    import lightgbm as lgb
    import numpy as np

    from jobs.models.registry import CHAMPION, Candidate, Registry
    from jobs.snapshots import snapshot_table

    table = snapshot_table(cfg.lake(), fs)
    train = table.read(ds)
    x = train[list(fs.feature_names)].to_numpy(dtype=np.float64, na_value=np.nan)
    y = (train["recency_days"].to_numpy() < 14).astype(int)
    booster = lgb.train(
        {"objective": "binary", "num_leaves": 7, "verbose": -1, "num_threads": 1}, lgb.Dataset(x, y), num_boost_round=10
    )
    return Registry.from_config(cfg).register(
        Candidate(
            name="repurchase_90d",
            model_text=booster.model_to_string(),
            feature_set=fs.name,
            feature_names=list(fs.feature_names),
            code_commit="a" * 40,
            feature_set_fingerprint=fs.fingerprint,
            training_set_fingerprints={f"{table.name}/ds={ds}": table.manifest(ds).content_fingerprint},
            environment_digest="b" * 64,
            params={"num_leaves": 7},
            metrics={"holdback_auc": 0.7},
            holdback={"key": "c" * 64},
            ranges={"train": [ds, ds]},
        ),
        alias=CHAMPION,
    )


@pytest.fixture(scope="module")
def served_day(tmp_path_factory, new_airflow):
    """Raw CDNOW days, three snapshots before DAY, a champion, and REQUESTS replayed against the service."""
    from fastapi.testclient import TestClient

    from jobs.config import Config
    from jobs.ingest.landing import land
    from jobs.quality.validate import validate_range
    from jobs.serving.app import Settings, create_app
    from jobs.serving.model import RegistrySource
    from jobs.serving.replay import plan_day, replay
    from jobs.serving.store import read_lake_events
    from jobs.snapshots import build_snapshot

    root = tmp_path_factory.mktemp("skew_nightly")
    af = new_airflow(root)
    cfg = Config(lake_root=str(root / "lake"))
    fs = cfg.repo().feature_set("customer_activity_v1")
    land(cfg, "cdnow_purchases", "1997-01-01", LAST_RAW)
    # validated, as the features DAG leaves them: snapshots and the skew job refuse unvalidated raw days
    validate_range(cfg, "raw_events", "1997-01-01", LAST_RAW, source="cdnow_purchases", alert=False, docs=False)
    for ds in ("1997-02-07", "1997-02-08", "1997-02-09"):
        build_snapshot(cfg, ds, fs.name)
    _register_champion(cfg, fs, "1997-02-09")
    wal = root / "wal"
    app = create_app(
        Settings(lake_root=cfg.lake_root, wal_dir=str(wal), mode="fresh"), model_source=RegistrySource(cfg), cfg=cfg
    )
    with TestClient(app) as client:
        res = replay(client, plan_day(read_lake_events(cfg, fs), DAY, REQUESTS, seed=5))
    assert (res.status == 200).all()
    return af, cfg, wal


def test_skew_nightly_publishes_validates_and_reports_the_day(served_day):
    from pathlib import Path

    af, cfg, wal = served_day
    af.dags_test(SKEW, DAY, conf={"wal_dir": str(wal)})
    lake = cfg.lake()
    logs = lake.table("serving_logs/repurchase_90d")  # the served (default) model's table
    assert logs.manifest(DAY).rows == REQUESTS
    assert Path(logs.partition_path(DAY), "_validation.json").exists()
    report = lake.table("skew_reports/repurchase_90d").read(DAY).set_index("feature")
    assert "__score__" in report.index and len(report) > 2
    assert (report["rows"] == REQUESTS).all() and (report["compared"] > 0).all()
    assert report.loc["__score__", "rescore_max_abs_diff"] == 0.0  # the champion re-scores its own rows
    assert report[["logic_skew", "version_skew"]].fillna(0).to_numpy().sum() == 0
    assert Path(lake.path("_reports", "skew", "repurchase_90d", f"ds={DAY}.html")).exists()


def test_a_rerun_keeps_the_serving_log_and_a_breach_fails_at_once_and_alerts(served_day):
    import json
    from pathlib import Path

    af, cfg, wal = served_day
    logs = cfg.lake().table("serving_logs/repurchase_90d")
    if not logs.exists(DAY):
        pytest.skip("the first run did not publish")
    before = logs.manifest(DAY)
    # The WAL named by the environment this time (what the service itself reads), nothing new in it; and
    # thresholds under which any drift against the champion's training snapshot is a breach.
    af.extra_env["LOCKSTEP_SERVING_WAL_DIR"] = str(wal)
    try:
        proc = af.dags_test(SKEW, DAY, conf={"thresholds": {"*": {"psi": 0.0}}}, check=False)
    finally:
        af.extra_env.pop("LOCKSTEP_SERVING_WAL_DIR")
    out = proc.stdout + proc.stderr
    after = logs.manifest(DAY)
    assert after.created_at == before.created_at and after.content_fingerprint == before.content_fingerprint
    assert "'action': 'keep'" in out  # the publish task's XCom, logged
    alerts = Path(cfg.lake().path("_alerts", "alerts.jsonl"))
    lines = [json.loads(line) for line in alerts.read_text().splitlines()] if alerts.exists() else []
    skew_alerts = [a for a in lines if f"{SKEW}.skew" in json.dumps(a)]
    assert skew_alerts, out[-4000:]
    text = json.dumps(skew_alerts[-1])
    assert "psi" in text and f"ds={DAY}.html" in text  # names the breach and the report page
    assert '"try_number": 1' in text  # failed fast: not retried
