"""``/metrics`` in the Prometheus text format: exact counts after known requests, in process and
summed over the workers of a real ``lockstep serve --workers 2``."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from .conftest import DAY, FS, MODEL
from .test_service import _app

SERVED = {"model": MODEL.name, "model_version": "3", "arm": "champion"}


def samples(text: str) -> list[tuple[str, dict, float]]:
    return [(s.name, s.labels, s.value) for fam in text_string_to_metric_families(text) for s in fam.samples]


def value(got: list, name: str, **labels) -> float:
    """The one sample ``name`` whose labels include ``labels`` (AssertionError if none or several)."""
    hits = [v for n, lab, v in got if n == name and all(lab.get(k) == str(w) for k, w in labels.items())]
    assert len(hits) == 1, (name, labels, hits)
    return hits[0]


def test_prometheus_counts_after_known_requests(lake_cfg, model_source, tmp_path):
    app = _app(lake_cfg, model_source, tmp_path, cache_ttl_s=60.0)
    t = f"{DAY}T12:00:00Z"
    with TestClient(app) as c:
        for e in (5, 5, 17, 17, 17):
            assert c.post("/predict", json={"entity_id": e, "request_time": t}).status_code == 200
        for e in (5, 99):
            r = c.post("/predict", json={"entity_id": e, "request_time": t, "mode": "materialized"})
            assert r.status_code == 200
        assert c.post("/predict", json={"entity_id": 5, "request_time": t, "mode": "bogus"}).status_code == 422
        r = c.get("/metrics")
        legacy = c.get("/metrics.json").json()
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    got = samples(r.text)
    for mode, n in (("fresh", 5), ("materialized", 2)):
        assert value(got, "lockstep_serving_requests_total", endpoint="/predict", mode=mode, status=200, **SERVED) == n
        assert value(got, "lockstep_serving_predictions_total", mode=mode, degraded="false", **SERVED) == n
        assert value(got, "lockstep_serving_predictions_total", mode=mode, degraded="true", **SERVED) == 0
        assert value(got, "lockstep_serving_request_latency_seconds_count", endpoint="/predict", mode=mode) == n
        assert value(got, "lockstep_serving_request_latency_seconds_bucket", mode=mode, le="+Inf") == n
        assert (
            value(got, "lockstep_serving_feature_set_requests_total", feature_set=FS.name, mode=mode, outcome="ok") == n
        )
        assert value(got, "lockstep_serving_feature_set_latency_seconds_count", feature_set=FS.name, mode=mode) == n
    assert not [s for s in got if s[1].get("status") == "422"]  # refused before the handler: no request counted
    per_set = {"model": MODEL.name, "feature_set": FS.name}
    assert value(got, "lockstep_serving_cache_hits_total", **per_set) == 3  # 5 twice, 17 three times
    assert value(got, "lockstep_serving_cache_misses_total", **per_set) == 2
    assert value(got, "lockstep_serving_store_timeouts_total", **per_set) == 0
    assert value(got, "lockstep_serving_log_queue_depth", model=MODEL.name) == 0
    assert value(got, "lockstep_serving_log_refused_total", reason="queue_full") == 0
    assert value(got, "lockstep_serving_model_swaps_total", model=MODEL.name) == 0
    assert value(got, "lockstep_serving_model_rollbacks_total", model=MODEL.name) == 0
    assert value(got, "lockstep_serving_model_info", **SERVED) == 1
    assert legacy["ok"] == 7 and legacy["cache_hits"] == 3  # the JSON view, under its own path


def test_prometheus_counts_degraded_sets_and_store_timeouts(lake_cfg, model_source, tmp_path):
    from jobs.serving.store import StoreUnavailable

    class Down:
        def events(self, entity_id):
            raise StoreUnavailable("store_timeout", "simulated")

    app = _app(lake_cfg, model_source, tmp_path, store=Down())
    with TestClient(app) as c:
        for _ in range(3):
            assert c.post("/predict", json={"entity_id": 5, "request_time": f"{DAY}T01:00:00Z"}).json()["degraded"]
        got = samples(c.get("/metrics").text)
    per_set = {"model": MODEL.name, "feature_set": FS.name}
    assert value(got, "lockstep_serving_store_timeouts_total", **per_set) == 3
    assert value(got, "lockstep_serving_store_errors_total", **per_set) == 0
    assert value(got, "lockstep_serving_predictions_total", mode="fresh", degraded="true", **SERVED) == 3
    assert value(got, "lockstep_serving_predictions_total", mode="fresh", degraded="false", **SERVED) == 0
    assert (
        value(got, "lockstep_serving_feature_set_requests_total", mode="fresh", outcome="store_timeout", **per_set) == 3
    )


def test_full_log_is_counted_as_refused_and_503(lake_cfg, model_source, tmp_path):
    from jobs.serving.log import LogQueueFull, ServingLog

    class Full(ServingLog):
        def submit(self, record):
            raise LogQueueFull("full")

    app = _app(lake_cfg, model_source, tmp_path, serving_log=Full(tmp_path / "w", MODEL))
    with TestClient(app) as c:
        assert c.post("/predict", json={"entity_id": 5, "request_time": f"{DAY}T01:00:00Z"}).status_code == 503
        got = samples(c.get("/metrics").text)
    assert value(got, "lockstep_serving_log_refused_total", model=MODEL.name, reason="queue_full") == 1
    assert value(got, "lockstep_serving_requests_total", endpoint="/predict", mode="fresh", status=503) == 1
    assert not [v for n, _, v in got if n == "lockstep_serving_predictions_total" and v]


def _segments_with_records(wal) -> dict[str, int]:
    """WAL records per writing process (the pid in each segment's name)."""
    out: dict[str, int] = {}
    for seg in wal.glob("segment-*.jsonl"):
        pid = seg.stem.rsplit("-", 1)[1]
        out[pid] = out.get(pid, 0) + seg.read_bytes().count(b"\n")
    return {pid: n for pid, n in out.items() if n}


def test_two_workers_sum_their_counts_in_one_scrape(lake_cfg, model, tmp_path):
    """A real ``lockstep serve --workers 2``: requests land on both workers (their WAL segments say
    which), and every scrape, whichever worker answers it, shows the sum of both."""
    import pickle
    import sys
    import threading

    import httpx

    from jobs.serving.log import model_wal_dir

    from .test_service import free_port
    from .test_service_process import Service, service_env

    model_path = tmp_path / "model.pkl"
    model_path.write_bytes(pickle.dumps(model))
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"stale")  # a previous run's file: removed at start
    port = free_port()
    argv = [sys.executable, "-m", "jobs.cli", "--lake", lake_cfg.lake_root, "serve", "--workers", "2"]
    argv += ["--port", str(port), "--wal-dir", str(tmp_path / "wal"), "--model-path", str(model_path)]
    argv += ["--metrics-dir", str(metrics_dir), "--api-keys-file", str(tmp_path / "keys")]
    from jobs.serving.auth import add_key

    _, key = add_key(tmp_path / "keys", "load-test")
    svc = Service(service_env(LOCKSTEP_SERVING_REFRESH_S="0"), port, tmp_path / "service.log", argv=argv)
    svc.start()
    wal = model_wal_dir(tmp_path / "wal", MODEL)
    sent = 0
    try:

        def burst(n: int) -> None:
            for i in range(n):  # a new connection per request: the kernel hands it to either worker
                body = {"entity_id": 5 + i, "request_time": f"{DAY}T12:00:00Z"}
                r = httpx.post(f"{svc.url}/predict", json=body, headers={"X-API-Key": key})
                assert r.status_code == 200

        while len(_segments_with_records(wal)) < 2 and sent < 400:
            threads = [threading.Thread(target=burst, args=(10,)) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            sent += 40
        per_worker = _segments_with_records(wal)
        assert len(per_worker) == 2, f"all {sent} requests went to one worker: {per_worker}"
        assert sum(per_worker.values()) == sent
        for _ in range(3):
            assert (
                httpx.post(f"{svc.url}/predict", json={"entity_id": 5}, headers={"X-API-Key": "nope"}).status_code
                == 401
            )
        scrapes = [samples(httpx.get(f"{svc.url}/metrics").text) for _ in range(6)]
        assert not (metrics_dir / "counter_999999.db").exists()
    finally:
        svc.stop()
    for got in scrapes:
        assert value(got, "lockstep_serving_requests_total", endpoint="/predict", mode="fresh", status=200) == sent
        assert value(got, "lockstep_serving_predictions_total", mode="fresh", degraded="false", **SERVED) == sent
        assert value(got, "lockstep_serving_request_latency_seconds_count", mode="fresh") == sent
        assert value(got, "lockstep_serving_feature_set_requests_total", mode="fresh", outcome="ok") == sent
        assert value(got, "lockstep_serving_model_swaps_total", model=MODEL.name) == 0
        assert value(got, "lockstep_serving_unauthorized_total", model=MODEL.name) == 3
    # the key reached the service in every request: no file it wrote holds it (WAL, metrics, its log)
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "keys"]
    assert wal.exists() and any(p.suffix == ".db" for p in written) and (tmp_path / "service.log").exists()
    assert [p for p in written if key.encode() in p.read_bytes()] == []
