"""Issue 15 item 11 against the real scheduler (SQLite, LocalExecutor): snapshot Asset events fired in
quick succession — most land while a ``batch_scoring`` run is queued or running, which Airflow 3.3 hands
to no run (its ``asset_dag_run_queue`` keeps one row per Asset, a run consumes the events up to that row's
first ``created_at`` and deletes it) — and every day is scored exactly once all the same."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

pytestmark = [pytest.mark.airflow, pytest.mark.timeout(900)]

MODEL = "repurchase_90d"
DAG = f"batch_scoring__{MODEL}"
SNAP = "feature_snapshots/customer_activity_v1"
DAYS = [f"1997-01-{d:02d}" for d in range(1, 7)]  # six snapshot days, one event each


def _champion(cfg) -> None:
    """A small LightGBM on random rows registered and promoted with the set's lineage (what scoring checks)."""
    import lightgbm as lgb

    from features import registry as feature_registry
    from jobs.models import metadata
    from jobs.models.registry import Candidate, Registry

    fs = feature_registry.get("customer_activity_v1")
    rng = np.random.default_rng(0)
    x = rng.gamma(1.0, 5.0, (400, len(fs.feature_names)))
    y = (x[:, 0] > 4).astype(int)
    params = {"objective": "binary", "verbosity": -1, "min_data_in_leaf": 5, "num_threads": 1, "seed": 0}
    booster = lgb.train(params, lgb.Dataset(x, y, feature_name=list(fs.feature_names)), 5)
    reg = Registry.from_config(cfg)
    reg.register(
        Candidate(
            name=MODEL,
            model_text=booster.model_to_string(),
            feature_set=fs.name,
            feature_names=list(fs.feature_names),
            code_commit="0" * 40,
            feature_set_fingerprint=fs.fingerprint,
            training_set_fingerprints={f"training_sets/{fs.name}/ds=1996-12-30": "c" * 64},
            environment_digest=metadata.environment_digest({}),
            params={"learning_rate": 0.1},
            metrics={"holdback_auc": 0.7},
            holdback={"key": "k" * 64},
        )
    )
    reg.promote(MODEL)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, new_airflow):
    """Its own Airflow (the shared one's lake has no champion) over a lake with six validated snapshot days."""
    from jobs.config import Config
    from jobs.ingest.cdnow import ingest_cdnow
    from jobs.quality.validate import validate_range
    from jobs.snapshots import build_snapshot

    root = tmp_path_factory.mktemp("catch_up")
    af = new_airflow(root)
    af.start(("scheduler", "dag-processor", "api-server"))
    try:
        cfg = Config(lake_root=str(root / "lake"))  # built while Airflow starts
        ingest_cdnow(cfg.lake(), DAYS[0], DAYS[-1])
        validate_range(cfg, "raw_events", DAYS[0], DAYS[-1], source="cdnow_purchases", docs=False, alert=False)
        for ds in DAYS:
            build_snapshot(cfg, ds, allow_unvalidated=False)
        validate_range(
            cfg, "feature_snapshots", DAYS[0], DAYS[-1], feature_set="customer_activity_v1", docs=False, alert=False
        )
        _champion(cfg)
        af.wait_until_up(timeout=240)
        af.wait_for_dag(DAG)
        yield af, cfg
    finally:
        af.stop()


def _post_event(af, asset_id: int, ds: str) -> None:
    for attempt in range(20):  # SQLite: a write may wait out another component's lock and answer 5xx
        try:
            af.api("POST", "assets/events", {"asset_id": asset_id, "extra": {"ds": ds}})
            return
        except RuntimeError as exc:
            if not any(code in str(exc) for code in ("HTTP 500", "HTTP 503")) or attempt == 19:
                raise
            time.sleep(1)


def _xcom(af, run_id: str, task_id: str):
    path = f"dags/{DAG}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value"
    value = af.api("GET", path)["value"]
    return json.loads(value) if isinstance(value, str) else value


def test_events_in_quick_succession_score_every_day_exactly_once(stack):
    from jobs import orchestration as o
    from jobs.config import Config
    from jobs.scoring.sql import read_day, sql_url

    af, cfg = stack
    uri = o.asset_uri(SNAP)
    deadline = time.monotonic() + 120
    while not (
        assets := [
            a for a in af.api("GET", "assets", params={"uri_pattern": "feature_snapshots"})["assets"] if a["uri"] == uri
        ]
    ):
        assert time.monotonic() < deadline, "the snapshot Asset was never registered"
        time.sleep(2)
    for ds in DAYS:  # as fast as the API takes them: the first run is created while the others land
        _post_event(af, assets[0]["id"], ds)

    deadline = time.monotonic() + 420
    while True:  # until no run is queued or running and no day is left due (or the deadline)
        runs = af.dag_runs(DAG)
        busy = any(r["state"] in ("queued", "running") for r in runs)
        states = o.scoring_states(Config(lake_root=cfg.lake_root), o.repo().model(MODEL), DAYS)
        if not busy and o.DUE not in states.values():
            break
        assert time.monotonic() < deadline, f"runs {[(r['dag_run_id'], r['state']) for r in runs]}, days {states}"
        af.check_alive()
        time.sleep(3)

    assert states == {d: o.SCORED for d in DAYS}
    assert {r["state"] for r in runs} == {"success"}
    scored = [d for r in runs for d in _xcom(af, r["dag_run_id"], "partitions")]
    assert sorted(scored) == DAYS, f"each day scored by exactly one run: {scored}"
    handed = [  # what Airflow itself handed to the runs: usually fewer than the events posted
        e["extra"]["ds"]
        for r in runs
        for e in af.api("GET", f"dags/{DAG}/dagRuns/{r['dag_run_id']}/upstreamAssetEvents")["asset_events"]
    ]
    print(f"{len(runs)} runs; Airflow handed them {sorted(handed)} of {DAYS}; they scored {scored}")
    lake = cfg.lake()
    for d in DAYS:
        rows = lake.table(SNAP).manifest(d).rows
        assert lake.table("predictions").manifest(d).rows == rows
        assert len(read_day(sql_url(cfg), d)) == rows  # published to SQL too

    # A day announced again with nothing new (the snapshot unchanged): a run, nothing due, nothing rewritten.
    before = {d: lake.table("predictions").manifest(d) for d in DAYS}
    _post_event(af, assets[0]["id"], DAYS[0])
    (new,) = [
        r
        for r in af.wait_for_runs(DAG, len(runs) + 1, timeout=300)
        if r["dag_run_id"] not in {x["dag_run_id"] for x in runs}
    ]
    assert new["state"] == "success" and _xcom(af, new["dag_run_id"], "partitions") == []
    skipped = {"score": "skipped", "validate_predictions": "skipped", "publish_sql": "skipped"}
    assert af.task_states(DAG, new["dag_run_id"]) == {"partitions": "success", **skipped}  # mapped over no day
    assert {d: lake.table("predictions").manifest(d) for d in DAYS} == before
