"""The service as a real uvicorn process under concurrent load, killed with SIGKILL and restarted.

Invariant: after the client has retried (same request_id) every request that did not get an
answer, the published serving log holds exactly one record per 200 response — none lost to the
kill, none extra.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from jobs.config import Config
from jobs.serving.log import model_wal_dir, publish, read_wal
from jobs.serving.replay import plan_day, replay

from .conftest import DAY, FS, MODEL
from .test_service import free_port

CONCURRENCY = 8


#: The checkout under test: the service subprocess must import this code, whatever else is installed.
REPO = str(Path(__file__).resolve().parents[3])


def service_env(**env) -> dict:
    """The test process's environment with this checkout first on the service's PYTHONPATH."""
    path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **env}


class Service:
    """A service subprocess: ``uvicorn --factory jobs.serving.app:app_from_env`` on ``port``, or
    ``argv`` (e.g. ``lockstep serve --workers 2``)."""

    def __init__(self, env: dict, port: int, log_path, argv: list[str] | None = None):
        self.env, self.port, self.log_path, self.argv = env, port, log_path, argv
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        with open(self.log_path, "ab") as out:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                self.argv
                or [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "--factory",
                    "jobs.serving.app:app_from_env",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--log-level",
                    "warning",
                    "--no-access-log",
                ],
                env=self.env,
                stdout=out,
                stderr=out,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).json()["status"] == "ok":
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.2)
        raise TimeoutError("service did not become healthy")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)


@pytest.fixture
def service(lake_cfg, model, tmp_path):
    model_path = tmp_path / "model.pkl"
    model_path.write_bytes(pickle.dumps(model))
    env = service_env(
        LOCKSTEP_LAKE=lake_cfg.lake_root,
        LOCKSTEP_SERVING_WAL_DIR=str(tmp_path / "wal"),
        LOCKSTEP_SERVING_MODEL_PATH=str(model_path),
        LOCKSTEP_SERVING_CACHE_TTL_S="5",
    )
    svc = Service(env, free_port(), tmp_path / "service.log")
    yield svc
    svc.stop()


def test_concurrent_load_then_kill9_loses_no_acknowledged_record(service, lake_cfg, lake_events, tmp_path):
    plan = plan_day(lake_events[0], DAY, 900, seed=21)
    first, second = plan.iloc[:600], plan.iloc[600:]
    service.start()

    got = {}
    t = threading.Thread(target=lambda: got.setdefault("a", replay(service.url, first, CONCURRENCY, timeout=5)))
    t.start()
    wal = model_wal_dir(tmp_path / "wal", MODEL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sum(p.read_bytes().count(b"\n") for p in wal.glob("segment-*")) < 100:
        time.sleep(0.01)
    service.kill9()  # mid-load: ~100 of 600 answered
    t.join()
    a = got["a"]
    answered = a[a.status == 200]
    assert 0 < len(answered) < len(first), "the kill should land mid-load"
    assert set(a.status) <= {200, 0}

    on_disk = set(read_wal(wal, FS).request_id)
    assert set(answered.request_id) <= on_disk, "an acknowledged record was lost"
    extra = on_disk - set(answered.request_id)
    assert len(extra) <= CONCURRENCY  # written, killed before the answer went out

    service.start()
    metrics = httpx.get(f"{service.url}/metrics.json").json()
    assert metrics["log_recovered_at_start"] == len(on_disk)
    retry = a[a.status != 200].drop(columns=["status", "score"])
    r = replay(service.url, retry, CONCURRENCY)
    b = replay(service.url, second, CONCURRENCY)
    assert (r.status == 200).all() and (b.status == 200).all(), "the service stopped serving under load"
    m = httpx.get(f"{service.url}/metrics.json").json()
    assert m["ok"] == len(r) + len(b) and m["log_queue_full"] == 0
    service.stop()

    cfg = Config(lake_root=str(tmp_path / "lake"))
    manifest = publish(cfg, wal, MODEL, DAY)
    ok_ids = set(answered.request_id) | set(r.request_id) | set(b.request_id)
    logged = cfg.lake().table(MODEL.serving_log_table).read(DAY)
    assert manifest.rows == len(ok_ids) == len(plan)
    assert set(logged.request_id) == ok_ids
    # The retried requests carry the same request time, so a record written before the kill is the same row.
    assert (
        logged.set_index("request_id").loc[plan.request_id, "request_time"].tolist()
        == pd.to_datetime(plan.request_time).tolist()
    )
