"""The windows the workers of one service share (``jobs.serving.peers``): the canary guards and the
served-drift judgement see every worker's samples, a breach or a drift alert is taken once for the
service, a dead worker's, another stage's or an unreadable window is not judged. Real files in a
temporary directory (two monitors with two worker names), and a real ``lockstep serve --workers 2``."""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import httpx
import numpy as np
import pandas as pd
import pytest

from features.model import CanaryGuards
from jobs.cli import main
from jobs.serving.drift import ServedDrift
from jobs.serving.guards import ArmWindows, GuardMonitor
from jobs.serving.log import model_wal_dir, segment_pid
from jobs.serving.peers import PeerDir, clean_peer_dir, latest

from .conftest import DAY, MODEL
from .test_model_swap import lake, register, registry_service, trained  # noqa: F401 - fixtures
from .test_service import free_port

GUARDS = CanaryGuards(window=20, min_requests=10, max_p99_excess_ms=5.0)


def feed(windows: ArmWindows, n: int, canary_ms: float = 1.0) -> None:
    for _ in range(n):
        windows.observe("champion", 1.0, False, False, 0.5)
        windows.observe("canary", canary_ms, False, False, 0.5)


def worker(root, name: str, share: float = 0.05) -> tuple[ArmWindows, GuardMonitor, list, list]:
    """One worker's windows and monitor over the shared ``root``; (breaches, follows) it called."""
    windows = ArmWindows(GUARDS.window)
    windows.reset("2", share)
    breaches, follows = [], []
    mon = GuardMonitor(
        GUARDS,
        windows,
        lambda: "2",
        lambda v, verdict: breaches.append((v, verdict)),
        peers=PeerDir(root, ident=name),
        on_follow=lambda v, verdict: follows.append((v, verdict)),
    )
    return windows, mon, breaches, follows


def test_the_guards_judge_both_workers_windows_and_one_of_them_takes_the_breach(tmp_path):
    wa, a, a_breaches, a_follows = worker(tmp_path, "a")
    wb, b, b_breaches, b_follows = worker(tmp_path, "b")
    feed(wa, 6)
    feed(wb, 6)
    # a judges first: b has not shared yet, 6 < min_requests 10 of its own
    first = a.evaluate()
    assert (first.judged, first.workers, first.n_canary) == (False, 1, 6)
    both = b.evaluate()  # a's 6 and its own 6 in each arm
    assert (both.judged, both.breached, both.workers, both.n_champion, both.n_canary) == (True, False, 2, 12, 12)
    assert a.evaluate().n_canary == 12
    # a slow canary in each worker: a judges its own 11 (5 slow) with b's last shared 6, breaks the
    # p99 guard and takes the breach (records, counts, alerts); b, judging next, follows a's verdict
    feed(wa, 5, canary_ms=60.0)
    feed(wb, 5, canary_ms=60.0)
    va = a.evaluate()
    assert [x.guard for x in va.breaches] == ["p99_latency"] and (va.workers, va.n_canary) == (2, 17)
    assert a_breaches == [("2", va)] and a_follows == []
    vb = b.evaluate()
    assert vb == va and b_follows == [("2", va)] and b_breaches == []
    assert b.last.breached and b.last.n_canary == 20  # b's own view: the last 20 of both workers
    assert a.stopped == b.stopped == {"2": va}
    assert a.evaluate() is None and b.evaluate() is None  # stopped in both
    claim = json.loads((tmp_path / "claim-canary-breach-2.json").read_text())
    assert claim["by"] == "a" and claim["n_canary"] == 17


def test_a_claim_without_its_evidence_still_stops_the_canary_in_this_worker(tmp_path):
    wa, a, breaches, follows = worker(tmp_path, "a")
    feed(wa, 12)  # healthy here
    (tmp_path / "claim-canary-breach-2.json").write_text('{"by": "b"}')  # b took a breach, its evidence is gone
    got = a.evaluate()
    assert (got.judged, got.breached, got.n_canary) == (True, False, 12)  # a's own verdict
    assert breaches == [] and follows == [("2", got)] and set(a.stopped) == {"2"}
    assert a.evaluate() is None


def test_the_last_window_observations_by_time_over_every_worker():
    old = np.array([[1.0, 0, 0, 0.1, 10.0], [2.0, 0, 0, 0.1, 30.0]])
    new = np.array([[3.0, 0, 0, 0.1, 20.0], [4.0, 0, 0, 0.1, 40.0]])
    assert latest([old, new], 3, 5)[:, 0].tolist() == [3.0, 2.0, 4.0]
    assert latest([old], 1, 5)[:, 0].tolist() == [2.0]
    assert latest([np.empty((0, 5))], 3, 5).shape == (0, 5)


def test_another_stage_a_dead_worker_and_an_unreadable_file_are_not_judged(tmp_path, caplog):
    wa, a, _, _ = worker(tmp_path, "a")
    wb, b, _, _ = worker(tmp_path, "b", share=0.25)  # another stage: its traffic is not a's evidence
    wc, c, _, _ = worker(tmp_path, "c")
    for w in (wa, wb, wc):
        feed(w, 6)
    b.evaluate()
    c.evaluate()
    assert a.evaluate().workers == 2  # a and c
    old = time.time() - a.stale_s - 1
    os.utime(tmp_path / "guards-c.npz", (old, old))  # c stopped writing (died): not read any more
    (tmp_path / "guards-d.npz").write_bytes(b"not a window")  # torn by something else: skipped, logged
    got = a.evaluate()
    assert (got.workers, got.n_canary, a.peers.skipped) == (1, 6, 1)
    assert "peer window guards-d.npz not read" in caplog.text
    # a directory that cannot be written: this worker still judges its own window (and says so)
    for f in tmp_path.iterdir():
        f.unlink()
    tmp_path.rmdir()
    got = a.evaluate()
    assert (got.workers, got.n_canary) == (1, 6)
    assert "canary guard window not shared with the other workers" in caplog.text


def test_a_new_run_starts_from_an_empty_directory(tmp_path):
    peers = PeerDir(tmp_path / "w", ident="a")
    peers.publish("guards", {"version": "2", "share": 0.05}, {"champion": np.zeros((0, 5))})
    assert peers.claim("canary-breach-2", {"n": 1}) and not PeerDir(tmp_path / "w", ident="b").claim(
        "canary-breach-2", {}
    )
    (tmp_path / "w" / "keep.txt").write_text("not ours")
    clean_peer_dir(tmp_path / "w")
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["keep.txt"]
    assert PeerDir(tmp_path / "w", ident="b").claim("canary-breach-2", {})  # the old claim is gone
    peers.publish("drift", {}, {"rows": np.zeros((0, 2))})
    peers.close()
    assert not list((tmp_path / "w").glob("*-a.npz"))


class Champion:
    version = "1"


def test_served_drift_is_judged_over_both_workers_and_alerted_once(tmp_path):
    reference = pd.DataFrame({"x": np.linspace(0.0, 1.0, 1000)})
    alerts = []

    def drift(name: str) -> ServedDrift:
        return ServedDrift(
            ["x"],
            0.25,
            lambda: Champion(),
            lambda _m: reference,
            lambda v, psi: alerts.append((name, v, sorted(psi))),
            window=1000,
            min_rows=500,
            peers=PeerDir(tmp_path, ident=name),
        )

    a, b = drift("a"), drift("b")
    a.observe([{"x": 5.0}] * 300)  # every served value above the training range
    b.observe([{"x": 5.0}] * 300)
    assert a.judge() is None and a.last is None  # 300 < min_rows: b has not shared yet
    assert b.judge()["x"] > 0.25  # 600 over both
    assert a.judge()["x"] > 0.25
    assert (a.last["rows"], a.last["workers"], b.last["rows"], b.last["workers"]) == (600, 2, 600, 2)
    assert alerts == [("b", "1", ["x"])]  # once for the service, by the worker that claimed it
    assert ("1", "x") in a.alerted  # a does not alert it later either


def test_two_real_workers_judge_each_others_canary_traffic(lake, trained, tmp_path, capsys):  # noqa: F811
    """``lockstep serve --workers 2`` with a canary at 0.5: requests land on both workers (their WAL
    segments say which), and the guards' verdict in EACH worker counts the queries of both."""
    register(lake, trained, 5, 0.70, alias="champion")
    v2 = register(lake, trained, 5, 0.80)
    assert main(["--lake", lake.lake_root, "canary", "--share", "0.5"]) == 0
    capsys.readouterr()
    port = free_port()
    argv = [sys.executable, "-m", "jobs.cli", "--lake", lake.lake_root, "serve", "--workers", "2", "--port", str(port)]
    argv += ["--wal-dir", str(tmp_path / "wal"), "--metrics-dir", str(tmp_path / "prom")]
    svc = registry_service(lake, tmp_path, LOCKSTEP_SERVING_GUARD_EVAL_S="0.2")
    svc.port, svc.argv = port, argv
    (tmp_path / "prom" / "windows").mkdir(parents=True)
    (tmp_path / "prom" / "windows" / f"claim-canary-breach-{v2}.json").write_text("{}")  # a previous run's
    svc.start()
    wal = model_wal_dir(tmp_path / "wal", MODEL)

    def burst(entities) -> None:
        for e in entities:  # a new connection per request: the kernel hands it to either worker
            r = httpx.post(f"{svc.url}/predict", json={"entity_id": e, "request_time": f"{DAY}T12:00:00Z"})
            assert r.status_code == 200

    try:
        entities = list(range(1, 401))
        threads = [threading.Thread(target=burst, args=(entities[i::4],)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        health: dict[int, dict] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            h = httpx.get(f"{svc.url}/health").json()
            g = h.get("canary_guards") or {}
            if g.get("n_champion", 0) + g.get("n_canary", 0) == 400:
                health[h["pid"]] = h
                if len(health) == 2:
                    break
            time.sleep(0.05)
    finally:
        svc.stop()
    arms: dict[int, dict[str, int]] = {}
    for seg in wal.glob("segment-*.jsonl"):
        for line in seg.read_text().splitlines():
            per = arms.setdefault(segment_pid(seg), {"champion": 0, "canary": 0})
            per[json.loads(line)["arm"]] += 1
    assert len(arms) == 2 and all(sum(a.values()) < 400 for a in arms.values()), arms  # both served some
    assert len(health) == 2, f"not both workers judged all 400 queries: {health}"
    total = {arm: sum(a[arm] for a in arms.values()) for arm in ("champion", "canary")}
    assert sum(total.values()) == 400 and total["canary"] >= MODEL.guards.min_requests
    for pid, h in health.items():
        g = h["canary_guards"]
        assert (h["canary_version"], h["canary_share"]) == (v2, 0.5)  # the stale claim was cleared at start
        assert (g["judged"], g["workers"], g["breaches"]) == (True, 2, [])
        assert (g["n_champion"], g["n_canary"]) == (total["champion"], total["canary"])
        assert h["canary_stopped"] == {}


@pytest.fixture(autouse=True)
def _mlflow():
    pytest.importorskip("mlflow")
