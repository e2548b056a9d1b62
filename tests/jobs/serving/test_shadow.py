"""Shadow scoring (``jobs.serving.shadow``): the challenger scores every request off the request path,
on the champion's feature vector; both scores land in the serving log; a full backlog is counted and
alerted, never waited for. The registry cases run against the real MLflow registry in a temp lake."""

from __future__ import annotations

import statistics
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from jobs.serving.app import Settings, create_app
from jobs.serving.log import model_wal_dir, read_wal
from jobs.serving.model import LinearModel, StaticSource

from .conftest import DAY, MODEL, fresh_alerts
from .test_metrics import samples, value
from .test_model_swap import lake, other_version_of_the_set, register, trained  # noqa: F401 - fixtures

pytest.importorskip("mlflow")


class SlowModel(LinearModel):
    """A challenger that takes ``delay_s`` per predict (a heavy model)."""

    def __init__(self, *args, delay_s: float = 0.2, **kw):
        super().__init__(*args, **kw)
        self.delay_s = delay_s

    def predict_matrix(self, x):
        time.sleep(self.delay_s)
        return super().predict_matrix(x)


class GatedModel(LinearModel):
    """A challenger that blocks in predict until released; ``entered`` is set when it is called."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.entered, self.release = threading.Event(), threading.Event()

    def predict_matrix(self, x):
        self.entered.set()
        assert self.release.wait(30)
        return super().predict_matrix(x)


def champion() -> LinearModel:
    return LinearModel(MODEL.name, "3", MODEL.fingerprint, MODEL.feature_names)


def weights() -> np.ndarray:
    return np.linspace(0.04, -0.03, len(MODEL.feature_names))


def client(cfg, tmp_path, source, **settings) -> TestClient:
    s = Settings(lake_root=cfg.lake_root, wal_dir=str(tmp_path / "wal"), cache_ttl_s=5.0, model_poll_s=0, **settings)
    return TestClient(create_app(s, model_source=source, cfg=cfg))


def body(entity: int, i: int = 0) -> dict:
    return {"entity_id": entity, "request_time": f"{DAY}T12:{i % 60:02d}:00Z", "request_id": f"r{entity}-{i}"}


def logged(tmp_path):
    return read_wal(model_wal_dir(tmp_path / "wal", MODEL), MODEL).set_index("request_id")


def features_of(frame) -> np.ndarray:
    return frame[list(MODEL.feature_names)].to_numpy(dtype=np.float64, na_value=np.nan)


def timed(c, bodies) -> list[float]:
    out = []
    for b in bodies:
        t0 = time.perf_counter()
        r = c.post("/predict", json=b)
        out.append(time.perf_counter() - t0)
        assert r.status_code == 200, r.text
    return out


def test_a_slow_challenger_adds_nothing_to_the_response_and_both_scores_are_logged(lake_cfg, tmp_path):  # noqa: F811
    bodies = [body(e, i) for i, e in enumerate(range(1, 13))]
    with client(lake_cfg, tmp_path / "alone", StaticSource(champion())) as c:
        timed(c, bodies[:2])  # warm-up
        alone = timed(c, bodies)
        assert c.app.state.lockstep["shadow"].version is None
    slow = SlowModel(MODEL.name, "4", MODEL.fingerprint, MODEL.feature_names, weights(), delay_s=0.2)
    source = StaticSource(champion(), slow, challenger=(MODEL.name, "4"))
    with client(lake_cfg, tmp_path, source) as c:
        timed(c, bodies[:2])
        shadowed = timed(c, bodies)
        health = c.get("/health").json()
        shadow = c.app.state.lockstep["shadow"]
        assert shadow.flush(timeout=20)
    print(
        f"response median: alone {statistics.median(alone) * 1000:.2f} ms, shadowed {statistics.median(shadowed) * 1000:.2f} ms"
    )
    # 12 requests x 200 ms of challenger: on the path, the median would be >= 200 ms
    assert statistics.median(shadowed) < statistics.median(alone) + 0.05, (alone, shadowed)
    assert max(shadowed) < 0.2
    assert health["challenger_version"] == "4" and health["model_version"] == "3"
    rows = logged(tmp_path)
    assert len(rows) == 14 and set(rows.arm) == {"champion"} and set(rows.model_version) == {"3"}
    assert set(rows.shadow_version) == {"4"}
    x = features_of(rows)
    assert rows.score.tolist() == champion().predict_matrix(x).tolist()
    assert (
        rows.shadow_score.tolist()
        == LinearModel("m", "4", "", MODEL.feature_names, weights()).predict_matrix(x).tolist()
    )


def test_a_full_shadow_backlog_is_counted_and_alerted_and_never_blocks(lake, tmp_path):  # noqa: F811
    gated = GatedModel(MODEL.name, "4", MODEL.fingerprint, MODEL.feature_names, weights())
    source = StaticSource(champion(), gated, challenger=(MODEL.name, "4"))
    try:
        with client(lake, tmp_path, source, shadow_queue_size=1, shadow_process=False) as c:
            timed(c, [body(1)])
            assert gated.entered.wait(10)  # the worker holds request 1; the queue has room for one more
            took = timed(c, [body(e) for e in (2, 3, 4, 5)])  # 2 queued, 3..5 dropped
            batch = c.post("/predict/batch", json={"queries": [body(6), body(7)]})
            assert batch.status_code == 200
            got = samples(c.get("/metrics").text)
            health = c.get("/health").json()
            gated.release.set()
            assert c.app.state.lockstep["shadow"].flush(timeout=10)
    finally:
        gated.release.set()
    assert max(took) < 1.0, took
    assert health["shadow_dropped"] == {"queue_full": 5, "log_full": 0, "error": 0, "crash": 0}
    assert value(got, "lockstep_serving_shadow_dropped_total", model=MODEL.name, reason="queue_full") == 5
    rows = logged(tmp_path)
    assert rows.shadow_score.notna().to_dict() == {
        "r1-0": True, "r2-0": True, "r3-0": False, "r4-0": False, "r5-0": False, "r6-0": False, "r7-0": False
    }  # fmt: skip
    deadline = time.monotonic() + 10
    path = tmp_path / "lake" / "_alerts" / "alerts.jsonl"
    while not fresh_alerts(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    alerts = fresh_alerts(path)
    assert [(a["title"], a["what"]) for a in alerts] == [(f"shadow dropped: {MODEL.name}", "shadow dropped")]
    assert "dropped 1 request(s) (queue_full)" in alerts[0]["reason"]


def test_the_registry_challenger_is_shadowed_and_a_refused_one_is_not(lake, trained, tmp_path):  # noqa: F811
    v1 = register(lake, trained, 5, 0.70, alias="champion")
    v2 = register(lake, trained, 15, 0.80)  # the challenger alias
    boosters, _ = trained
    settings = Settings(lake_root=lake.lake_root, wal_dir=str(tmp_path / "wal"), cache_ttl_s=5.0, model_poll_s=0)
    with TestClient(create_app(settings, cfg=lake)) as c:
        state = c.app.state.lockstep
        for i, e in enumerate((3, 5, 8)):
            assert c.post("/predict", json=body(e, i)).json()["model_version"] == v1
        assert c.post("/predict/batch", json={"queries": [body(11), body(12)]}).status_code == 200
        assert state["shadow"].flush(timeout=20)
        bad = register(lake, trained, 25, 0.90, fs=other_version_of_the_set())  # the alias moves to it
        assert state["challenger"].reload().status == "refused"
        health = c.get("/health").json()
        assert c.post("/predict", json=body(20)).status_code == 200
        assert state["shadow"].flush(timeout=20)
        got = samples(c.get("/metrics").text)
    rows = logged(tmp_path)
    shadowed = rows.loc[["r3-0", "r5-1", "r8-2", "r11-0", "r12-0"]]
    assert set(shadowed.shadow_version) == {v2} and set(shadowed.model_version) == {v1}
    x = features_of(shadowed)
    assert shadowed.shadow_score.tolist() == boosters[15].predict(x, num_threads=1).tolist()
    assert shadowed.score.tolist() == boosters[5].predict(x, num_threads=1).tolist()
    assert rows.loc["r20-0"][["shadow_version", "shadow_score"]].isna().all()
    assert health["challenger_version"] is None and health["challenger_refused"]["version"] == bad
    assert value(got, "lockstep_serving_challenger_refused_total", model=MODEL.name, reason="fingerprint") == 1
    assert value(got, "lockstep_serving_shadow_scored_total", model=MODEL.name, shadow_version=v2) == 5
    alerts = fresh_alerts(tmp_path / "lake" / "_alerts" / "alerts.jsonl")
    assert [a["title"] for a in alerts] == [f"challenger refused: {MODEL.name} v{bad}"]


def test_a_lingering_shadow_worker_scores_the_offers_queued_behind_the_first_in_one_call(tmp_path):
    from jobs.serving.log import ServingLog
    from jobs.serving.shadow import ShadowScorer

    calls = []

    def score(model, names, rows):
        calls.append(len(rows))
        return [0.5] * len(rows)

    names = list(MODEL.feature_names)
    row = dict.fromkeys(names, 1.0)
    now = f"{DAY}T12:00:00Z"
    for linger, expected in ((1.0, [5]), (0.0, None)):
        calls.clear()
        writer = ServingLog(tmp_path / f"shadow-{linger}", MODEL).start()
        shadow = ShadowScorer(names, writer, score, linger_s=linger).start()
        shadow.install(champion())
        for i in range(5):
            assert shadow.offer([f"r{i}"], [now], [row])
            time.sleep(0.05)  # offered one by one, as requests arrive
        assert shadow.flush(timeout=10)
        assert shadow.scored == 5
        shadow.close()
        if expected is not None:
            assert calls == expected  # the four later offers waited behind the first: one model call
        else:
            assert sum(calls) == 5 and len(calls) > 1  # no linger: scored as they come
