"""Swapping the champion without downtime (``jobs.serving.swap``), against the real MLflow registry
in a temporary lake: a promotion mid-load, a champion for another feature-set version refused, the
``lockstep model rollback`` CLI reaching a running service, ``POST /admin/reload`` and SIGHUP."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from features.repo import Repo
from jobs.config import Config
from jobs.serving.app import Settings, create_app
from jobs.serving.auth import add_key
from jobs.serving.log import model_wal_dir, read_wal
from jobs.serving.replay import plan_day

from .conftest import DAY, FS, MODEL, fresh_alerts
from .test_metrics import samples, value
from .test_service import free_port
from .test_service_process import Service, service_env

pytest.importorskip("mlflow")

POLL_S = 0.5
#: how late a poll may start after its interval on this shared 2-core machine (thread wake-up)
SLACK_S = 0.25
HOLDBACK_KEY = "c" * 64


@pytest.fixture
def lake(lake_cfg, tmp_path, monkeypatch):
    """A lake of its own over the session lake's data: its own registry (SQLite) and alerts log."""
    monkeypatch.delenv("LOCKSTEP_MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("LOCKSTEP_ALERTS_LOG", raising=False)
    root = tmp_path / "lake"
    root.mkdir()
    for name in ("raw_events", "feature_snapshots"):
        (root / name).symlink_to(f"{lake_cfg.lake_root}/{name}")
    return Config(lake_root=str(root))


@pytest.fixture
def trained(lake):
    """Boosters of 5, 15 and 25 rounds on one snapshot day (different scores), and their lineage."""
    import lightgbm as lgb

    from jobs.snapshots import snapshot_table

    table = snapshot_table(lake.lake(), FS)
    train = table.read("1997-04-07")
    x = train[list(FS.feature_names)].to_numpy(dtype=np.float64, na_value=np.nan)
    y = (train["recency_days"].to_numpy() < 30).astype(int)
    params = {"objective": "binary", "num_leaves": 7, "verbose": -1, "num_threads": 1}
    boosters = {n: lgb.train(params, lgb.Dataset(x, y), num_boost_round=n) for n in (5, 15, 25)}
    parts = {f"{table.name}/ds=1997-04-07": table.manifest("1997-04-07").content_fingerprint}
    return boosters, parts


def register(lake, trained, rounds: int, auc: float, alias: str = "challenger", fs=FS) -> str:
    """Register the ``rounds`` booster as a new version of the served model; ``fs``: the feature set
    it was trained on (another version of it: a registry that declared that version)."""
    from jobs.models.registry import Candidate, Registry

    boosters, parts = trained
    reg = Registry.from_config(lake)
    if fs is not FS:  # the registry of a checkout that declared the other version
        reg = Registry(reg.uri, reg.artifact_root, repo=Repo.of(fs))
    info = reg.register(
        Candidate(
            name=MODEL.name,
            model_text=boosters[rounds].model_to_string(),
            feature_set=fs.name,
            feature_names=list(fs.feature_names),
            code_commit="a" * 40,
            feature_set_fingerprint=fs.fingerprint,
            training_set_fingerprints=parts,
            environment_digest="b" * 64,
            params={"num_leaves": 7, "rounds": rounds},
            metrics={"holdback_auc": auc},
            holdback={"key": HOLDBACK_KEY},
            ranges={"train": ["1997-04-07", "1997-04-07"]},
        ),
        alias=alias,
    )
    return str(info.version)


def promote(lake) -> str:
    """What ``lockstep model promote`` calls: the challenger becomes the champion."""
    from jobs.models.registry import Registry

    return str(Registry.from_config(lake).promote(MODEL.name).version)


def other_version_of_the_set():
    """``FS`` with one window changed: another version of the set, another fingerprint, same feature names."""
    feats = tuple(dataclasses.replace(f, window_days=60) if f.name == "spend_max_90d" else f for f in FS.features)
    other = dataclasses.replace(FS, features=feats)
    assert other.fingerprint != FS.fingerprint and other.feature_names == FS.feature_names
    return other


def rows_of(lake_events, n: int = 400) -> list[dict]:
    plan = plan_day(lake_events[0], DAY, n, seed=5)
    return [{"entity_id": int(e), "request_time": t.isoformat()} for e, t in zip(plan.entity_id, plan.request_time)]


class Load:
    """Threads posting ``/predict`` back to back until stopped; one row per request: when it was sent
    and answered (wall clock), its status and the version that answered it."""

    def __init__(self, url: str, bodies: list[dict], threads: int = 3, headers: dict | None = None):
        self.url, self.bodies, self.headers = url, bodies, headers or {}
        self.rows: list[dict] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, i: int) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            n = i
            while not self._stop.is_set():
                body = {**self.bodies[n % len(self.bodies)], "request_id": uuid.uuid4().hex}
                n += len(self._threads)
                sent = time.time()
                try:
                    r = client.post("/predict", json=body, headers=self.headers)
                    status, version = r.status_code, r.json().get("model_version")
                except httpx.HTTPError as exc:
                    status, version = repr(exc), None
                self.rows.append(
                    {"request_id": body["request_id"], "sent": sent, "answered": time.time(), "status": status}
                    | {"version": version}
                )

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(list(self.rows))


def wait_for_version(get_health, version: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = get_health()
        if health["model_version"] == version:
            return health
        time.sleep(0.02)
    raise AssertionError(f"still serving v{get_health()['model_version']}, not v{version}")


def check_started(health: dict) -> float:
    """When the check that swapped in the serving version started (unix time)."""
    return pd.Timestamp(health["model_loaded_at"]).timestamp() - health["model_swap_seconds"]


def registry_service(lake, tmp_path, **env) -> Service:
    env = service_env(
        **{
            "LOCKSTEP_LAKE": lake.lake_root,
            "LOCKSTEP_SERVING_WAL_DIR": str(tmp_path / "wal"),
            "LOCKSTEP_SERVING_MODEL_POLL_S": str(POLL_S),
            "LOCKSTEP_SERVING_CACHE_TTL_S": "5",
            **env,
        }
    )
    for name in ("LOCKSTEP_MLFLOW_TRACKING_URI", "LOCKSTEP_ALERTS_LOG", "LOCKSTEP_SERVING_MODEL_PATH"):
        env.pop(name, None)
    return Service(env, free_port(), tmp_path / "service.log")


def assert_logged_by_their_version(tmp_path, load: pd.DataFrame, trained, versions: dict) -> pd.DataFrame:
    """Every logged row names the version that answered its request, and its score is exactly that
    version's booster's score of its logged features. ``versions``: {version: rounds}."""
    logged = read_wal(model_wal_dir(tmp_path / "wal", MODEL), MODEL).set_index("request_id")
    answered = load.set_index("request_id")
    assert sorted(logged.index) == sorted(answered.index), "one log row per 200"
    assert set(logged.model_version) <= set(versions)
    assert (logged.loc[answered.index, "model_version"] == answered.version).all()
    boosters, _ = trained
    for version, rounds in versions.items():
        rows = logged[logged.model_version == version]
        x = rows[list(FS.feature_names)].to_numpy(dtype=np.float64, na_value=np.nan)
        assert (rows.score.to_numpy() == boosters[rounds].predict(x)).all(), f"v{version} rows not scored by v{version}"
    return logged


def test_a_promotion_mid_load_swaps_within_one_interval_without_a_failed_request(lake, trained, lake_events, tmp_path):
    v1 = register(lake, trained, 5, 0.70, alias="champion")
    v2 = register(lake, trained, 15, 0.80)
    svc = registry_service(lake, tmp_path)
    svc.start()
    try:
        health = httpx.get(f"{svc.url}/health").json()
        assert (health["model_version"], health["model_poll_s"], health["model_swaps"]) == (v1, POLL_S, 0)
        with Load(svc.url, rows_of(lake_events)) as load:
            time.sleep(1.5)
            assert promote(lake) == v2
            promoted = time.time()
            health = wait_for_version(lambda: httpx.get(f"{svc.url}/health").json(), v2)
            time.sleep(1.5)  # load on the new version
        got = samples(httpx.get(f"{svc.url}/metrics").text)
    finally:
        svc.stop()
    rows = load.frame()
    assert set(rows.status) == {200}, rows.status.value_counts().to_dict()
    assert set(rows.version) == {v1, v2}
    started, loaded = check_started(health), pd.Timestamp(health["model_loaded_at"]).timestamp()
    assert started - promoted <= POLL_S + SLACK_S, "the alias move was not seen within one poll interval"
    assert (rows[rows.sent > loaded].version == v2).all() and (rows.sent > loaded).sum() > 20
    assert (rows[rows.answered < started].version == v1).all() and (rows.answered < started).sum() > 20
    assert_logged_by_their_version(tmp_path, rows, trained, {v1: 5, v2: 15})
    assert health["model_swaps"] == 1 and health["model_refused"] is None
    assert value(got, "lockstep_serving_model_swaps_total", model=MODEL.name) == 1
    assert value(got, "lockstep_serving_model_rollbacks_total", model=MODEL.name) == 0
    assert value(got, "lockstep_serving_model_info", model_version=v2) == 1
    assert value(got, "lockstep_serving_model_info", model_version=v1) == 0
    for v in (v1, v2):  # every request counted under the version that scored it
        n = int((rows.version == v).sum())
        assert value(got, "lockstep_serving_requests_total", endpoint="/predict", status=200, model_version=v) == n


def in_process(lake, tmp_path, **settings):
    app = create_app(
        Settings(lake_root=lake.lake_root, wal_dir=str(tmp_path / "wal"), cache_ttl_s=5.0, **settings), cfg=lake
    )
    return TestClient(app)


def predict(client, entity: int = 5, headers=None) -> dict:
    r = client.post("/predict", json={"entity_id": entity, "request_time": f"{DAY}T12:00:00Z"}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_champion_for_another_feature_set_version_is_refused_alerted_and_counted_once(lake, trained, tmp_path):
    v1 = register(lake, trained, 5, 0.70, alias="champion")
    other = other_version_of_the_set()
    bad = register(lake, trained, 15, 0.90, fs=other)
    with in_process(lake, tmp_path, model_poll_s=POLL_S) as c:
        assert predict(c)["model_version"] == v1
        assert promote(lake) == bad
        deadline = time.monotonic() + 20
        while c.get("/health").json()["model_refused"] is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(4 * POLL_S)  # later polls see the same refused version: no second load, alert or count
        health = c.get("/health").json()
        answer = predict(c, 17)
        reload = c.post("/admin/reload")
        got = samples(c.get("/metrics").text)
    assert health["model_refused"]["version"] == bad and health["model_version"] == v1
    assert f"trained on features {other.fingerprint}" in health["model_refused"]["reason"]
    assert health["model_swaps"] == 0
    assert answer["model_version"] == v1 and answer["feature_set_fingerprint"] == FS.fingerprint
    assert reload.status_code == 409
    body = reload.json()
    assert (body["status"], body["serving"], body["champion"]) == ("refused", v1, bad)
    assert f"trained on features {other.fingerprint}" in body["reason"] and MODEL.fingerprint in body["reason"]
    assert value(got, "lockstep_serving_model_swaps_refused_total", model=MODEL.name, reason="fingerprint") == 1
    assert value(got, "lockstep_serving_model_swaps_refused_total", model=MODEL.name, reason="feature_names") == 0
    assert value(got, "lockstep_serving_model_swaps_total", model=MODEL.name) == 0
    alerts = fresh_alerts(tmp_path / "lake" / "_alerts" / "alerts.jsonl")
    # registered as the challenger first: refused for the shadow at start-up, then as the champion
    assert [(a["title"], a["what"], a["dataset"]) for a in alerts] == [
        (f"challenger refused: {MODEL.name} v{bad}", "challenger refused", MODEL.name),
        (f"model swap refused: {MODEL.name} v{bad}", "model swap refused", MODEL.name),
    ]
    assert all(f"trained on features {other.fingerprint}" in a["reason"] for a in alerts)
    logged = read_wal(model_wal_dir(tmp_path / "wal", MODEL), MODEL)
    assert set(logged.model_version) == {v1}


def test_lockstep_model_rollback_reaches_a_running_service_within_one_interval(lake, trained, lake_events, tmp_path):
    v1 = register(lake, trained, 5, 0.70, alias="champion")
    v2 = register(lake, trained, 15, 0.80)
    svc = registry_service(lake, tmp_path)
    svc.start()
    try:
        health = lambda: httpx.get(f"{svc.url}/health").json()  # noqa: E731
        with Load(svc.url, rows_of(lake_events), threads=2) as load:
            assert promote(lake) == v2
            wait_for_version(health, v2)
            cli = subprocess.run(
                [sys.executable, "-m", "jobs.cli", "--lake", lake.lake_root, "model", "rollback"],
                env=svc.env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            rolled = time.time()
            assert cli.returncode == 0, cli.stderr
            assert cli.stdout.strip() == f"{MODEL.name}: rolled back, v{v1} is the champion"
            back = wait_for_version(health, v1)
            time.sleep(1.0)
        got = samples(httpx.get(f"{svc.url}/metrics").text)
    finally:
        svc.stop()
    assert check_started(back) - rolled <= POLL_S + SLACK_S
    rows = load.frame()
    assert set(rows.status) == {200} and set(rows.version) == {v1, v2}
    loaded = pd.Timestamp(back["model_loaded_at"]).timestamp()
    assert (rows[rows.sent > loaded].version == v1).all() and (rows.sent > loaded).sum() > 10
    assert_logged_by_their_version(tmp_path, rows, trained, {v1: 5, v2: 15})
    assert back["model_swaps"] == 2
    assert value(got, "lockstep_serving_model_swaps_total", model=MODEL.name) == 2
    assert value(got, "lockstep_serving_model_rollbacks_total", model=MODEL.name) == 1


def test_admin_reload_swaps_at_once_and_needs_a_key_when_keys_are_configured(lake, trained, tmp_path):
    v1 = register(lake, trained, 5, 0.70, alias="champion")
    v2 = register(lake, trained, 15, 0.80)
    key_file = tmp_path / "keys"
    _, key = add_key(key_file, "ops")
    auth = {"X-API-Key": key}
    with in_process(lake, tmp_path, model_poll_s=0.0, api_keys_file=str(key_file)) as c:  # no poll
        assert predict(c, headers=auth)["model_version"] == v1
        assert promote(lake) == v2
        time.sleep(1.0)
        still = predict(c, headers=auth)["model_version"]
        no_key = c.post("/admin/reload")
        bad_key = c.post("/admin/reload", headers={"X-API-Key": key + "x"})
        after_401 = predict(c, headers=auth)["model_version"]
        swapped = c.post("/admin/reload", headers=auth)
        now = predict(c, headers=auth)
        again = c.post("/admin/reload", headers={"Authorization": f"Bearer {key}"})
        health = c.get("/health").json()
        got = samples(c.get("/metrics").text)
    assert still == after_401 == v1
    assert no_key.status_code == bad_key.status_code == 401
    assert swapped.status_code == 200
    assert swapped.json() == {
        "status": "swapped",
        "serving": v2,
        "champion": v2,
        "previous": v1,
        "rollback": False,
        "reason": None,
    }
    assert now["model_version"] == v2
    assert again.status_code == 200 and again.json()["status"] == "unchanged" and again.json()["serving"] == v2
    assert health["model_version"] == v2 and health["model_poll_s"] == 0.0 and health["model_swaps"] == 1
    assert value(got, "lockstep_serving_unauthorized_total", model=MODEL.name) == 2
    assert value(got, "lockstep_serving_model_swaps_total", model=MODEL.name) == 1


def test_sighup_swaps_a_uvicorn_process_that_does_not_poll(lake, trained, tmp_path):
    v1 = register(lake, trained, 5, 0.70, alias="champion")
    v2 = register(lake, trained, 15, 0.80)
    svc = registry_service(lake, tmp_path, LOCKSTEP_SERVING_MODEL_POLL_S="0")
    svc.start()
    try:
        health = lambda: httpx.get(f"{svc.url}/health").json()  # noqa: E731
        assert health()["model_version"] == v1
        assert promote(lake) == v2
        time.sleep(1.0)
        assert health()["model_version"] == v1  # no poll: nothing moves by itself
        svc.proc.send_signal(signal.SIGHUP)
        assert wait_for_version(health, v2, timeout=10)["model_swaps"] == 1
        assert svc.proc.poll() is None  # SIGHUP did not end the process
    finally:
        svc.stop()


def test_a_champion_that_does_not_load_keeps_the_old_one_serving_and_is_retried(lake, trained, tmp_path):
    from urllib.parse import urlparse

    from jobs.models.registry import Registry

    v1 = register(lake, trained, 5, 0.70, alias="champion")
    v2 = register(lake, trained, 15, 0.80)
    artifact = Path(urlparse(Registry.from_config(lake).get(MODEL.name, int(v2)).source).path) / "model.txt"
    text = artifact.read_text()
    artifact.unlink()  # v2's booster is gone (a half-synced artifact store)
    with in_process(lake, tmp_path, model_poll_s=0.0) as c:
        assert promote(lake) == v2
        failed = c.post("/admin/reload")
        still = predict(c)["model_version"]
        artifact.write_text(text)  # back: the next check loads it
        retried = c.post("/admin/reload")
        got = samples(c.get("/metrics").text)
    assert failed.status_code == 503
    assert (failed.json()["status"], failed.json()["serving"], failed.json()["champion"]) == ("error", v1, v2)
    assert still == v1
    assert retried.status_code == 200 and retried.json()["status"] == "swapped" and retried.json()["serving"] == v2
    assert value(got, "lockstep_serving_model_reload_errors_total", model=MODEL.name) == 1
    assert value(got, "lockstep_serving_model_swaps_refused_total", reason="fingerprint") == 0


def test_every_worker_follows_the_champion_on_its_own(lake, trained, tmp_path):
    v1 = register(lake, trained, 5, 0.70, alias="champion")
    v2 = register(lake, trained, 15, 0.80)
    port = free_port()
    argv = [sys.executable, "-m", "jobs.cli", "--lake", lake.lake_root, "serve", "--workers", "2", "--port", str(port)]
    argv += ["--wal-dir", str(tmp_path / "wal"), "--model-poll-s", str(POLL_S), "--metrics-dir", str(tmp_path / "prom")]
    svc = registry_service(lake, tmp_path)
    svc.port, svc.argv = port, argv
    svc.start()

    def versions(n: int = 20) -> set:  # a new connection per request: the kernel hands it to either worker
        body = {"entity_id": 5, "request_time": f"{DAY}T12:00:00Z"}
        return {httpx.post(f"{svc.url}/predict", json=body).json()["model_version"] for _ in range(n)}

    try:
        assert versions() == {v1}
        assert promote(lake) == v2
        deadline = time.monotonic() + 20
        while versions() != {v2} and time.monotonic() < deadline:
            time.sleep(0.1)
        assert versions(40) == {v2}
        got = samples(httpx.get(f"{svc.url}/metrics").text)
    finally:
        svc.stop()
    assert value(got, "lockstep_serving_model_swaps_total", model=MODEL.name) == 2  # one swap in each worker
    assert value(got, "lockstep_serving_model_info", model_version=v2) == 1
    assert value(got, "lockstep_serving_model_info", model_version=v1) == 0
    logged = read_wal(model_wal_dir(tmp_path / "wal", MODEL), MODEL)
    assert set(logged.model_version) == {v1, v2}
