"""kill -9 of the real service (uvicorn, MLflow registry, WAL) during a champion swap and during a
shadow backlog. After the restart every request acknowledged with a 200 is in the WAL and in the
published serving log, with its champion score and the version that served it; the shadow's
backlog lost with the process is re-scored by the same challenger from the WAL, or — when that
challenger is gone — counted as dropped (``crash``), alerted and marked: never lost silently.

The process is ``crash_service.py``: the service as ``uvicorn --factory`` runs it, plus two
test-only delays (a registry load held while the test kills; a slow challenger).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from jobs.config import Config
from jobs.serving.log import model_wal_dir, publish, read_wal, shadow_wal_dir, wal_records

from .conftest import DAY, FS, MODEL, fresh_alerts
from .test_metrics import samples, value
from .test_model_swap import Load, lake, promote, register, registry_service, rows_of, trained  # noqa: F401
from .test_service_process import Service

pytest.importorskip("mlflow")

CRASH_SERVICE = str(Path(__file__).with_name("crash_service.py"))


def crash_service(cfg, tmp_path, **env) -> Service:
    svc = registry_service(cfg, tmp_path, **env)
    svc.argv = [sys.executable, CRASH_SERVICE, str(svc.port)]
    return svc


def wal_of(tmp_path) -> Path:
    return model_wal_dir(tmp_path / "wal", MODEL)


def features_of(frame) -> np.ndarray:
    return frame[list(FS.feature_names)].to_numpy(dtype=np.float64, na_value=np.nan)


def acknowledged(load) -> set:
    rows = load.frame()
    return set(rows[rows.status == 200].request_id)


def wait(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def check_served(logged, ids: set, versions: dict, models) -> None:
    """Every id in ``ids`` is logged once, by a version of ``versions`` ({version: rounds}), with
    exactly that version's booster's score of its logged features."""
    boosters, _ = models
    assert ids <= set(logged.index), f"{len(ids - set(logged.index))} acknowledged request(s) lost"
    rows = logged.loc[sorted(ids)]
    assert set(rows.model_version) <= set(versions)
    for version, rounds in versions.items():
        mine = rows[rows.model_version == version]
        assert (mine.score.to_numpy() == boosters[rounds].predict(features_of(mine), num_threads=1)).all()


def test_kill9_during_a_swap_loses_no_acknowledged_record(lake, trained, lake_events, tmp_path):  # noqa: F811
    v1 = register(lake, trained, 5, 0.70, alias="champion")
    v2 = register(lake, trained, 15, 0.80)
    mark = tmp_path / "loading"
    svc = crash_service(
        lake,
        tmp_path,
        LOCKSTEP_SERVING_SHADOW="0",
        LOCKSTEP_TEST_HOLD_VERSION=v2,
        LOCKSTEP_TEST_HOLD_S="120",
        LOCKSTEP_TEST_HOLD_MARK=str(mark),
    )
    svc.start()
    try:
        with Load(svc.url, rows_of(lake_events), threads=4) as first:
            time.sleep(1.0)
            assert promote(lake) == v2
            wait(mark.exists, what="the swap's load to start")
            time.sleep(0.5)  # requests keep coming while v2 is being loaded
            health = httpx.get(f"{svc.url}/health").json()
            assert health["model_version"] == v1 and health["model_swaps"] == 0  # the swap is in progress
            svc.kill9()
        ack1 = acknowledged(first)
        assert len(ack1) > 50
        assert set(first.frame().version.dropna()) == {v1}
        on_disk = read_wal(wal_of(tmp_path), MODEL).set_index("request_id")
        check_served(on_disk, ack1, {v1: 5}, trained)
        assert len(set(on_disk.index) - ack1) <= 4  # written, killed before the answer went out

        svc.env.pop("LOCKSTEP_TEST_HOLD_VERSION")
        svc.start()  # the champion alias names v2: it serves v2 from the start
        assert httpx.get(f"{svc.url}/health").json()["model_version"] == v2
        with Load(svc.url, rows_of(lake_events), threads=2) as second:
            time.sleep(1.0)
    finally:
        svc.stop()
    ack2 = acknowledged(second)
    assert len(ack2) > 10 and set(second.frame().status) == {200}
    logged = read_wal(wal_of(tmp_path), MODEL).set_index("request_id")
    check_served(logged, ack1, {v1: 5}, trained)
    check_served(logged, ack2, {v2: 15}, trained)
    assert (logged.loc[sorted(ack2), "model_version"] == v2).all()

    cfg = Config(lake_root=lake.lake_root)
    publish(cfg, wal_of(tmp_path), MODEL, DAY)
    published = cfg.lake().table(MODEL.serving_log_table).read(DAY).set_index("request_id")
    check_served(published, ack1 | ack2, {v1: 5, v2: 15}, trained)
    assert (published.loc[sorted(ack1), "model_version"] == v1).all()


def recovered(svc) -> dict:
    """``/health`` once the start-up shadow recovery is done."""

    def done():
        health = httpx.get(f"{svc.url}/health").json()
        return (health.get("shadow_recovered") or {}).get("done") and health

    return wait(done, what="the shadow recovery")


def shadow_records(tmp_path) -> list[dict]:
    return wal_records(sorted(shadow_wal_dir(wal_of(tmp_path)).glob("segment-*.jsonl")))


def backlog_then_kill(svc, lake_events, tmp_path, depth: int = 40) -> set:
    """Load until the shadow backlog holds ``depth`` offers, then SIGKILL: the acknowledged ids."""
    with Load(svc.url, rows_of(lake_events), threads=4) as load:

        def deep() -> bool:
            got = samples(httpx.get(f"{svc.url}/metrics").text)
            return value(got, "lockstep_serving_shadow_queue_depth", model=MODEL.name) >= depth

        wait(deep, what="a shadow backlog")
        svc.kill9()
    return acknowledged(load)


@pytest.mark.parametrize("process", ["1", "0"], ids=["shadow_process", "shadow_thread"])
def test_kill9_during_a_shadow_backlog_rescores_it_at_restart_or_counts_it(
    lake,  # noqa: F811
    trained,  # noqa: F811
    lake_events,
    tmp_path,
    process,
):
    boosters, _ = trained
    v1 = register(lake, trained, 5, 0.70, alias="champion")
    v2 = register(lake, trained, 15, 0.80)  # the challenger: 0.5 s per model call in the shadow
    svc = crash_service(
        lake,
        tmp_path,
        LOCKSTEP_TEST_SLOW_VERSION=v2,
        LOCKSTEP_TEST_SLOW_S="0.5",
        LOCKSTEP_SERVING_SHADOW_PROCESS=process,
    )
    svc.start()
    try:
        ack1 = backlog_then_kill(svc, lake_events, tmp_path)
        on_disk = read_wal(wal_of(tmp_path), MODEL).set_index("request_id")
        check_served(on_disk, ack1, {v1: 5}, trained)
        assert set(on_disk.loc[sorted(ack1), "shadow_version"]) == {v2}  # each row names its challenger
        unscored = set(on_disk.index[on_disk.shadow_score.isna()])
        assert len(unscored & ack1) >= 30, "the kill should lose a shadow backlog"

        svc.start()  # same challenger: the backlog is re-scored from the WAL
        health = recovered(svc)
        assert health["shadow_recovered"] == {"segments": 1, "rescored": len(unscored), "lost": 0, "done": True}
        assert health["shadow_dropped"]["crash"] == 0
        wait(lambda: read_wal(wal_of(tmp_path), MODEL).shadow_score.notna().all(), what="the backlog re-scored")
        logged = read_wal(wal_of(tmp_path), MODEL).set_index("request_id")
        rows = logged.loc[sorted(set(on_disk.index))]
        assert set(rows.shadow_version) == {v2}
        assert (rows.shadow_score.to_numpy() == boosters[15].predict(features_of(rows), num_threads=1)).all()
        check_served(logged, ack1, {v1: 5}, trained)

        # a second crash, and the challenger alias moves before the restart: v2's backlog cannot be
        # scored by v2 any more -> counted as dropped (crash), alerted and marked, never silently absent
        ack2 = backlog_then_kill(svc, lake_events, tmp_path)
        before = read_wal(wal_of(tmp_path), MODEL).set_index("request_id")
        lost = set(before.index[before.shadow_score.isna()])
        assert len(lost & ack2) >= 30
        v3 = register(lake, trained, 25, 0.85)
        svc.start()
        health = recovered(svc)
        got = samples(httpx.get(f"{svc.url}/metrics").text)
    finally:
        svc.stop()
    assert health["challenger_version"] == v3
    assert health["shadow_recovered"] == {"segments": 1, "rescored": 0, "lost": len(lost), "done": True}
    assert health["shadow_dropped"]["crash"] == len(lost)
    assert value(got, "lockstep_serving_shadow_dropped_total", model=MODEL.name, reason="crash") == len(lost)
    path = Path(lake.lake_root) / "_alerts" / "alerts.jsonl"
    crash_alerts = wait(
        lambda: [a for a in fresh_alerts(path) if a["what"] == "shadow dropped" and "(crash)" in a["reason"]],
        what="the crash alert",
    )
    assert f"dropped {len(lost)} request(s) (crash)" in crash_alerts[0]["reason"]
    markers = {r["request_id"]: r for r in shadow_records(tmp_path) if r.get("shadow_dropped")}
    assert set(markers) == lost and {m["shadow_dropped"] for m in markers.values()} == {"crash"}
    logged = read_wal(wal_of(tmp_path), MODEL).set_index("request_id")
    check_served(logged, ack1 | ack2, {v1: 5}, trained)
    assert (
        set(logged.loc[sorted(lost), "shadow_version"]) == {v2} and logged.loc[sorted(lost)].shadow_score.isna().all()
    )

    cfg = Config(lake_root=lake.lake_root)
    publish(cfg, wal_of(tmp_path), MODEL, DAY)
    published = cfg.lake().table(MODEL.serving_log_table).read(DAY).set_index("request_id")
    check_served(published, ack1 | ack2, {v1: 5}, trained)
    scored = published.loc[sorted((ack1 | ack2) - lost)]
    assert (scored.shadow_score.to_numpy() == boosters[15].predict(features_of(scored), num_threads=1)).all()
