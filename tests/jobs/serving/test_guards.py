"""Canary guards and automatic rollback (``jobs.serving.guards``), against the real MLflow registry in a
temporary lake: a slow, an erroring and a score-shifted challenger are each stopped within the window,
with an alert, a registry record and a counter; a healthy one is not; the stop survives a restart; the
ramp refuses to advance past a recorded breach until ``--reset-breach``. Also: the pure judge on
hand-built windows, the declaration's validation, the champion's staleness alert."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from features.model import CanaryGuards
from features.source import DeclarationError
from jobs.cli import main
from jobs.serving.app import Settings, create_app
from jobs.serving.guards import ArmStats, ArmWindows, GuardMonitor, judge, training_age_days
from jobs.serving.model import RegistrySource

from .conftest import DAY, MODEL
from .test_canary import canary_set
from .test_metrics import samples, value
from .test_model_swap import lake, register, trained  # noqa: F401 - fixtures

pytest.importorskip("mlflow")

ENTITIES = list(range(1, 401))


def arm(latency, error=0.0, degraded=0.0, scores=None) -> ArmStats:
    n = len(latency)
    s = np.full(n, np.nan) if scores is None else np.asarray(scores, dtype=np.float64)
    return ArmStats(np.asarray(latency, float), np.full(n, float(error)), np.full(n, float(degraded)), s)


def test_the_judge_on_hand_built_windows_gives_exact_values():
    g = CanaryGuards(window=100, min_requests=10)
    home = arm([1.0] * 99 + [5.0], scores=np.linspace(0, 1, 100))
    # too few canary requests: not judged, whatever they look like
    v = judge(g, home, arm([900.0] * 9))
    assert (v.judged, v.breached, v.n_canary) == (False, False, 9)
    # p99 of [1]*99 + [5] is 1 + 0.01 * 99 * ... = np.percentile: 1.04; the limit max(2 * 1.04, 1.04 + 25)
    v = judge(g, home, arm([26.0] * 20, scores=np.linspace(0, 1, 20)))
    assert v.observed["champion_p99_ms"] == pytest.approx(1.04)
    assert not v.breached  # 26 < 26.04
    v = judge(g, home, arm([26.1] * 20, scores=np.linspace(0, 1, 20)))
    assert [(b.guard, b.observed, round(b.threshold, 6)) for b in v.breaches] == [("p99_latency", 26.1, 26.04)]
    # error rate: 2 of 20 (0.1) vs 0 over an allowed excess of 0.01; degraded: 0.1 vs 0 within 0.05? no
    lat = [1.0] * 20
    bad = ArmStats(
        np.asarray(lat), np.array([1.0] * 2 + [0.0] * 18), np.array([1.0] * 2 + [0.0] * 18), np.full(20, 0.5)
    )
    v = judge(g, home, bad)
    assert [(b.guard, b.observed, b.champion) for b in v.breaches][:2] == [
        ("error_rate", 0.1, 0.0),
        ("degraded_rate", 0.1, 0.0),
    ]
    # scores all in one bin of the champion's: the PSI of the skew job's function, > 0.25
    v = judge(g, home, arm(lat, scores=[0.95] * 20))
    assert [b.guard for b in v.breaches] == ["score_psi"] and v.observed["score_psi"] > 3
    assert judge(g, home, arm(lat, scores=np.linspace(0, 1, 20))).observed["score_psi"] < 0.25
    # a guard turned off
    off = CanaryGuards(window=100, min_requests=10, max_score_psi=float("inf"))
    assert not judge(off, home, arm(lat, scores=[0.95] * 20)).breached


def test_guards_are_validated_at_declaration():
    with pytest.raises(DeclarationError, match="field 'min_requests': needs 1 <= min_requests <= window \\(50\\)"):
        CanaryGuards(window=50, min_requests=100)
    with pytest.raises(DeclarationError, match="field 'max_p99_ratio': must be >= 1, got 0.5"):
        CanaryGuards(max_p99_ratio=0.5)
    with pytest.raises(DeclarationError, match="field 'max_score_psi': must be a number >= 0, got -1"):
        CanaryGuards(max_score_psi=-1)
    assert MODEL.guards == CanaryGuards()  # the defaults
    assert CanaryGuards().window == 1000 and CanaryGuards().min_requests == 100


def test_a_stale_champion_alerts_once_with_its_exact_age():
    got = []
    mon = GuardMonitor(
        CanaryGuards(),
        ArmWindows(1000),
        lambda: None,
        lambda v, verdict: None,
        champion=lambda: ("3", ("1997-03-01", "1997-04-07")),
        max_age_days=30,
        on_stale=lambda v, age, limit: got.append((v, age, limit)),
        now=lambda: pd.Timestamp("1997-05-07T12:00:00Z"),
    )
    assert mon.staleness() == 30.5
    assert mon.staleness() == 30.5
    assert got == [("3", 30.5, 30)]  # once per champion version, not per check
    assert training_age_days(("1997-03-01", "1997-04-07"), pd.Timestamp("1997-04-08T00:00:00Z")) == 1.0
    assert training_age_days(None, pd.Timestamp("1997-04-08T00:00:00Z")) is None


class Faulty:
    """A challenger as a user could ship one: slower, failing, or with its scores shifted."""

    def __init__(self, inner, kind: str):
        self.inner, self.kind = inner, kind
        self.name, self.version = inner.name, inner.version
        self.feature_set_fingerprint, self.feature_names = inner.feature_set_fingerprint, inner.feature_names

    def predict_matrix(self, x):
        if self.kind == "slow":
            time.sleep(0.3)
        if self.kind == "error":
            raise RuntimeError("challenger broke")
        s = self.inner.predict_matrix(x)
        return np.clip(s + 0.4, 0, 1) if self.kind == "shift" else s


class FaultySource(RegistrySource):
    def __init__(self, cfg, bad: str, kind: str):
        super().__init__(cfg, MODEL.name)
        self.bad, self.kind = bad, kind

    def load(self, name, version):
        m = super().load(name, version)
        return Faulty(m, self.kind) if str(version) == self.bad else m


def batches(tag: str, size: int = 50) -> list[dict]:
    qs = [{"entity_id": e, "request_time": f"{DAY}T12:00:00Z", "request_id": f"{tag}-{e}"} for e in ENTITIES]
    return [{"queries": qs[i : i + size]} for i in range(0, len(qs), size)]


def alerts(tmp_path) -> list[dict]:
    path = tmp_path / "lake" / "_alerts" / "alerts.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize(
    "kind, guard", [("slow", "p99_latency"), ("error", "error_rate"), ("shift", "score_psi"), ("healthy", None)]
)
def test_a_breaking_canary_is_stopped_recorded_and_alerted_a_healthy_one_is_not(
    lake,  # noqa: F811
    trained,  # noqa: F811
    tmp_path,
    capsys,
    kind,
    guard,
):
    from jobs.models.registry import CANARY_BREACH_TAG, CANARY_TAG, Registry

    v1 = register(lake, trained, 5, 0.70, alias="champion")
    v2 = register(lake, trained, 5, 0.80)  # the same trees: healthy unless made faulty below
    assert main(["--lake", lake.lake_root, "canary", "--share", "0.5"]) == 0
    capsys.readouterr()
    canary = canary_set(ENTITIES, 0.5)
    settings = Settings(
        lake_root=lake.lake_root, wal_dir=str(tmp_path / "wal"), cache_ttl_s=5.0, model_poll_s=0, guard_eval_s=0.1
    )
    source = FaultySource(lake, v2, kind) if guard else RegistrySource(lake, MODEL.name)
    with TestClient(create_app(settings, cfg=lake, model_source=source)) as c:
        state = c.app.state.lockstep
        first = []
        for body in batches("a"):
            r = c.post("/predict/batch", json=body)
            assert r.status_code == 200
            first += r.json()["predictions"]
        monitor = state["guards"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and v2 not in monitor.stopped and (guard or monitor.last is None):
            time.sleep(0.05)
        if guard is None:
            time.sleep(0.5)  # several more evaluations: still not stopped
        after = [p for b in batches("b") for p in c.post("/predict/batch", json=b).json()["predictions"]]
        got = samples(c.get("/metrics").text)
        health = c.get("/health").json()
    served_canary = {p["entity_id"] for p in first if p["arm"] == "canary"}
    if guard is None:
        assert monitor.last.judged and not monitor.last.breached, monitor.last
        assert health["canary_share"] == 0.5 and health["canary_guards"]["judged"] is True
        assert health["canary_guards"]["breaches"] == [] and health["canary_stopped"] == {}
        assert v2 not in monitor.stopped
        assert {p["entity_id"] for p in after if p["arm"] == "canary"} == canary
        assert not [a for a in alerts(tmp_path) if a["what"] == "canary stopped"]
        assert Registry.from_config(lake).get(MODEL.name, int(v2)).tags.get(CANARY_BREACH_TAG) is None
        return
    verdict = monitor.stopped[v2]
    assert health["canary_share"] == 0.0 and health["canary_version"] == v2
    assert health["canary_stopped"] == {v2: [b.describe() for b in verdict.breaches]}
    assert health["champion_training_age_days"] > MODEL.champion_max_age_days  # trained on 1997 data
    assert guard in [b.guard for b in verdict.breaches]
    assert verdict.n_canary <= MODEL.guards.window  # stopped within the window
    if kind == "error":  # an erroring canary's queries are answered by the champion
        assert served_canary == set()
    else:  # judged from min_requests canary answers on; the stop can come in the middle of the traffic
        assert MODEL.guards.min_requests <= len(served_canary) and served_canary <= canary
    assert all(p["arm"] == "champion" and p["model_version"] == v1 for p in after)  # stopped: the champion's
    assert value(got, "lockstep_serving_canary_rollbacks_total", model=MODEL.name, reason=guard) == 1
    stopped = [a for a in alerts(tmp_path) if a["what"] == "canary stopped"]
    assert [a["title"] for a in stopped] == [f"canary stopped: {MODEL.name} v{v2}"]
    assert f"{guard}: " in stopped[0]["reason"] and "every request is the champion's" in stopped[0]["reason"]
    info = Registry.from_config(lake).get(MODEL.name, int(v2))
    record = json.loads(info.tags[CANARY_BREACH_TAG])
    assert guard in record["guards"] and record["window"] == MODEL.guards.window
    assert record["n_canary"] == verdict.n_canary and float(info.tags[CANARY_TAG]) == 0.0
    b = next(b for b in record["breaches"] if b["guard"] == guard)
    if kind == "error":  # no canary scores at all: no PSI, recorded as null (strict JSON)
        assert record["observed"]["score_psi"] is None and record["observed"]["canary_error_rate"] == 1.0
    assert b["observed"] > b["threshold"]
    # a restart (a healthy source now) reads the record: the canary stays stopped
    with TestClient(create_app(settings, cfg=lake)) as c:
        again = [p for body in batches("c") for p in c.post("/predict/batch", json=body).json()["predictions"]]
        assert c.app.state.lockstep["canary"] == (v2, 0.0)
    assert {p["arm"] for p in again} == {"champion"}
    # the ramp refuses past the record until it is reset explicitly
    assert main(["--lake", lake.lake_root, "canary", "--next"]) != 0
    assert "stopped by its canary guards" in capsys.readouterr().err
    assert main(["--lake", lake.lake_root, "canary", "--reset-breach"]) == 0
    assert "breach record cleared; canary share 0" in capsys.readouterr().out
    assert main(["--lake", lake.lake_root, "canary", "--share", "0.05"]) == 0
