"""The canary ramp (``features.model.CanaryRamp``, ``jobs.serving.canary.advance_canary``) on the real
MLflow registry of a temporary lake: every decision provoked with its exact reason; the stage-start and
passing-verdict tags round trip; the guard monitor records a pass only when it judged, throttled, never
at share 0 nor after a breach; a real service's guards write the evidence the ramp then advances on; the
DAG ``canary_ramp__<model>`` advances a stage in ``airflow dags test`` and holds on its second run."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time

import pytest
from fastapi.testclient import TestClient

from features.model import DEFAULT_CANARY_STEPS, CanaryGuards, CanaryRamp
from features.source import DeclarationError
from jobs.cli import main
from jobs.serving import canary as c
from jobs.serving.app import Settings, create_app
from jobs.serving.canary import advance_canary
from jobs.serving.guards import ArmWindows, GuardMonitor

from .conftest import MODEL
from .test_guards import ENTITIES, batches
from .test_model_swap import lake, register, trained  # noqa: F401 - fixtures

pytest.importorskip("mlflow")

HOUR = dt.timedelta(minutes=61)


def tags(cfg, version) -> dict:
    from jobs.models.registry import Registry

    return Registry.from_config(cfg).get(MODEL.name, int(version)).tags


def judged(cfg, version, share: float, at: dt.datetime, n: int = 120) -> None:
    from jobs.models.registry import Registry

    evidence = {"share": share, "at": at.isoformat(), "n_canary": n, "n_champion": n + 1, "pid": 1}
    Registry.from_config(cfg).record_canary_judged(MODEL.name, version, evidence)


# ---- the declaration ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, field, problem",
    [
        ({"steps": ()}, "steps", "must be shares in (0, 1]"),
        ({"steps": (0.0, 0.5)}, "steps", "must be shares in (0, 1]"),
        ({"steps": (0.5, 1.5)}, "steps", "must be shares in (0, 1]"),
        ({"steps": (0.05, 0.05, 1.0)}, "steps", "must be strictly increasing"),
        ({"steps": (0.25, 0.05)}, "steps", "must be strictly increasing"),
        ({"min_stage_minutes": -1}, "min_stage_minutes", "must be a number >= 0"),
        ({"min_stage_minutes": float("inf")}, "min_stage_minutes", "must be a number >= 0"),
        ({"schedule": " "}, "schedule", "must be a cron expression, a preset or None"),
    ],
)
def test_a_bad_ramp_is_refused_at_declaration(kwargs, field, problem):
    with pytest.raises(DeclarationError) as e:
        CanaryRamp(**kwargs)
    assert e.value.field == field and problem in str(e.value)


def test_the_ramp_is_declared_on_the_model_and_owns_the_default_steps():
    from jobs.models.registry import CANARY_RAMP

    assert CANARY_RAMP == DEFAULT_CANARY_STEPS == CanaryRamp().steps == (0.01, 0.05, 0.25, 1.0)
    assert MODEL.ramp == CanaryRamp() and CanaryRamp(steps=[0.1, 1]).steps == (0.1, 1)
    assert [CanaryRamp().next_step(s) for s in (0.0, 0.01, 0.1, 0.25, 1.0)] == [0.01, 0.05, 0.25, 1.0, None]
    with pytest.raises(DeclarationError, match="'ramp': must be a CanaryRamp"):
        dataclasses.replace(MODEL, ramp=(0.01, 1.0))


# ---- every decision, on the real registry --------------------------------------------------------------------
def test_every_ramp_decision_with_its_reason(lake, trained, capsys):  # noqa: F811
    from jobs.models.registry import CANARY_JUDGED_TAG, CANARY_STAGE_AT_TAG, CANARY_TAG, Registry

    register(lake, trained, 5, 0.70, alias="champion")
    d = advance_canary(lake, MODEL)
    assert (d.reason, d.version, d.advanced) == (c.NO_CHALLENGER, None, False)
    assert d.detail == f"model {MODEL.name!r} has no challenger alias"

    v2 = register(lake, trained, 15, 0.80)
    d = advance_canary(lake, MODEL)  # the schedule never starts a canary: nothing judges a share of 0
    assert (d.reason, d.share_from, d.share_to) == (c.NOT_STARTED, 0.0, 0.0)
    assert CANARY_TAG not in tags(lake, v2)

    before = dt.datetime.now(dt.UTC)
    d = advance_canary(lake, MODEL, start=True)  # the command does
    assert (d.reason, d.version, d.share_from, d.share_to, d.advanced) == (c.STARTED, v2, 0.0, 0.01, True)
    t = tags(lake, v2)
    began = dt.datetime.fromisoformat(t[CANARY_STAGE_AT_TAG])
    assert float(t[CANARY_TAG]) == 0.01 and before <= began <= dt.datetime.now(dt.UTC)

    d = advance_canary(lake, MODEL, now=began + dt.timedelta(minutes=30))
    assert (d.reason, d.share_from, d.share_to) == (c.TOO_EARLY, 0.01, 0.01)
    assert d.detail == (f"the stage at 0.01 began {began.isoformat()}, 30.0 min ago < min_stage_minutes 60")
    d = advance_canary(lake, MODEL, now=began + HOUR)
    assert (d.reason, d.detail) == (c.NOT_JUDGED, "no passing guard verdict recorded at share 0.01")

    judged(lake, v2, 0.01, began - dt.timedelta(seconds=1))  # a verdict from before the stage
    d = advance_canary(lake, MODEL, now=began + HOUR)
    assert d.reason == c.NOT_JUDGED and "since the stage began" in d.detail and "the last: share 0.01" in d.detail
    judged(lake, v2, 0.05, began + dt.timedelta(minutes=5))  # another share (a stale service's, say)
    assert advance_canary(lake, MODEL, now=began + HOUR).reason == c.NOT_JUDGED

    at = began + dt.timedelta(minutes=5)
    judged(lake, v2, 0.01, at)
    assert json.loads(tags(lake, v2)[CANARY_JUDGED_TAG]) == {
        "share": 0.01,
        "at": at.isoformat(),
        "n_canary": 120,
        "n_champion": 121,
        "pid": 1,
    }
    d = advance_canary(lake, MODEL, now=began + HOUR)
    assert (d.reason, d.share_from, d.share_to, d.advanced) == (c.ADVANCED, 0.01, 0.05, True)
    assert d.detail == (
        f"the stage lasted 61.0 min; the guards passed at 0.01 at {at.isoformat()} over 120 canary and 121 "
        "champion requests"
    )
    t = tags(lake, v2)
    assert float(t[CANARY_TAG]) == 0.05 and dt.datetime.fromisoformat(t[CANARY_STAGE_AT_TAG]) > began
    # the 0.01 verdict does not carry over to the new stage
    assert advance_canary(lake, MODEL, now=began + 3 * HOUR).reason == c.NOT_JUDGED

    d = advance_canary(lake, MODEL, force=True)
    assert (d.reason, d.share_from, d.share_to) == (c.FORCED, 0.05, 0.25)

    reg = Registry.from_config(lake)
    reg.client.delete_model_version_tag(MODEL.name, v2, CANARY_STAGE_AT_TAG)  # a share set before this code
    d = advance_canary(lake, MODEL, now=began + 3 * HOUR)
    assert (d.reason, d.detail) == (
        c.TOO_EARLY,
        "no stage start recorded on the version (set the share again to start a stage)",
    )

    reg.record_canary_breach(MODEL.name, v2, {"guards": ["p99_latency"]})
    for force in (False, True):  # never past a breach, forced or not
        d = advance_canary(lake, MODEL, force=force, start=True)
        assert (d.reason, d.share_from, d.share_to) == (c.BREACH, 0.0, 0.0)
        assert "stopped by its canary guards" in d.detail and "p99_latency" in d.detail
    assert main(["--lake", lake.lake_root, "canary", "--next"]) == 1
    assert f"{MODEL.name} v{v2} (challenger): canary held at 0 (breach: stopped by" in capsys.readouterr().err

    reg.reset_canary_breach(MODEL.name)
    reg.set_canary_share(MODEL.name, 1.0)
    d = advance_canary(lake, MODEL, now=began + 9 * HOUR)
    assert (d.reason, d.share_from, d.detail) == (
        c.COMPLETE,
        1.0,
        "already at the last step of the ramp (0.01, 0.05, 0.25, 1.0)",
    )
    assert d.as_dict()["advanced"] is False and d.as_dict()["reason"] == "complete"


def test_the_command_steps_only_while_the_guards_hold(lake, trained, capsys):  # noqa: F811
    from jobs.models.registry import CANARY_TAG

    register(lake, trained, 5, 0.70, alias="champion")
    v2 = register(lake, trained, 15, 0.80)
    root = lake.lake_root
    assert main(["--lake", root, "canary", "--next"]) == 0  # starts at the first step
    assert f"{MODEL.name} v{v2} (challenger): canary share 0 -> 0.01 (started" in capsys.readouterr().out
    assert main(["--lake", root, "canary", "--next"]) == 1  # the stage has just begun
    err = capsys.readouterr().err
    assert "canary held at 0.01 (too early: the stage at 0.01 began " in err and "min_stage_minutes 60" in err
    assert float(tags(lake, v2)[CANARY_TAG]) == 0.01
    assert main(["--lake", root, "canary", "--share", "0.05", "--force"]) == 2
    assert "--force goes with --next" in capsys.readouterr().err
    assert main(["--lake", root, "canary", "--next", "--force"]) == 0
    assert "canary share 0.01 -> 0.05 (forced" in capsys.readouterr().out
    assert float(tags(lake, v2)[CANARY_TAG]) == 0.05


def test_a_registry_error_is_raised_not_held(lake, monkeypatch, tmp_path):  # noqa: F811
    (tmp_path / "file").write_text("not a directory")
    monkeypatch.setenv("LOCKSTEP_MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/file/mlflow.db")
    with pytest.raises(OSError, match="File exists"):  # the DAG's task fails on it, is retried, then alerts
        advance_canary(lake, MODEL)


# ---- the guards' evidence ------------------------------------------------------------------------------------
def feed(windows: ArmWindows, n: int, canary_ms: float = 1.0) -> None:
    for _ in range(n):
        windows.observe("champion", 1.0, False, False, None)
        windows.observe("canary", canary_ms, False, False, None)


def test_the_monitor_records_a_pass_only_when_it_judged_throttled_never_at_0_nor_after_a_breach():
    guards = CanaryGuards(window=20, min_requests=10, max_p99_excess_ms=5.0)
    windows = ArmWindows(guards.window)
    passes, breaches = [], []
    mon = GuardMonitor(
        guards,
        windows,
        lambda: "2",
        lambda v, verdict: breaches.append(v),
        on_pass=lambda v, share, verdict: passes.append((v, share, verdict.n_canary, verdict.n_champion)),
        pass_every_s=3600,
    )
    windows.reset("2", 0.05)
    feed(windows, 9)
    assert mon.evaluate().judged is False and passes == []  # min_requests not met: no evidence
    feed(windows, 1)
    assert mon.evaluate().judged and passes == [("2", 0.05, 10, 10)]
    feed(windows, 3)
    mon.evaluate()
    assert passes == [("2", 0.05, 10, 10)]  # throttled: once per pass_every_s per stage
    windows.reset("2", 0.25)  # the next stage: its first pass is recorded at once, from its own traffic
    feed(windows, 12)
    mon.evaluate()
    assert passes[-1] == ("2", 0.25, 12, 12)
    windows.reset("2", 0.0)  # a share of 0 serves no canary: never evidence
    feed(windows, 12)
    assert mon.evaluate().judged and len(passes) == 2
    mon.pass_every_s = 0.0
    windows.reset("2", 0.25)
    feed(windows, 10)
    mon.evaluate()
    assert len(passes) == 3
    feed(windows, 20, canary_ms=50.0)  # a breach: stopped, no pass, and never again for this version
    assert mon.evaluate().breached and breaches == ["2"] and len(passes) == 3
    feed(windows, 20)
    assert mon.evaluate() is None and len(passes) == 3


def test_a_failing_record_of_a_pass_does_not_stop_the_monitor_and_is_retried():
    guards = CanaryGuards(window=20, min_requests=10)
    windows = ArmWindows(guards.window)
    calls = []

    def flaky(version, share, verdict):
        calls.append((version, share))
        if len(calls) == 1:
            raise ConnectionError("registry down")

    mon = GuardMonitor(guards, windows, lambda: "2", lambda *_: None, on_pass=flaky, pass_every_s=3600)
    windows.reset("2", 0.05)
    feed(windows, 10)
    assert mon.evaluate().judged and mon.passed == {}  # logged, not throttled: nothing was recorded
    assert mon.evaluate().judged and calls == [("2", 0.05), ("2", 0.05)] and set(mon.passed) == {("2", 0.05)}
    mon.evaluate()
    assert len(calls) == 2  # recorded once: throttled from now on


def test_a_service_records_the_evidence_the_ramp_advances_on(lake, trained, tmp_path, capsys):  # noqa: F811
    from jobs.models.registry import CANARY_JUDGED_TAG, CANARY_STAGE_AT_TAG, CANARY_TAG

    register(lake, trained, 5, 0.70, alias="champion")
    v2 = register(lake, trained, 5, 0.80)  # the same trees: a healthy canary
    assert main(["--lake", lake.lake_root, "canary", "--share", "0.5"]) == 0  # ~200 of the 400 entities
    began = dt.datetime.fromisoformat(tags(lake, v2)[CANARY_STAGE_AT_TAG])
    settings = Settings(
        lake_root=lake.lake_root, wal_dir=str(tmp_path / "wal"), cache_ttl_s=5.0, model_poll_s=0, guard_eval_s=0.1
    )
    with TestClient(create_app(settings, cfg=lake)) as client:
        for body in batches("a"):
            assert client.post("/predict/batch", json=body).status_code == 200
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and CANARY_JUDGED_TAG not in tags(lake, v2):
            time.sleep(0.1)
    record = json.loads(tags(lake, v2)[CANARY_JUDGED_TAG])
    assert record["share"] == 0.5 and record["n_canary"] >= MODEL.guards.min_requests
    assert record["n_champion"] >= MODEL.guards.min_requests and record["n_canary"] + record["n_champion"] <= len(
        ENTITIES
    )
    assert dt.datetime.fromisoformat(record["at"]) >= began
    d = advance_canary(lake, MODEL, now=began + HOUR)
    assert (d.reason, d.share_from, d.share_to) == (c.ADVANCED, 0.5, 1.0)
    assert float(tags(lake, v2)[CANARY_TAG]) == 1.0


# ---- the DAG ------------------------------------------------------------------------------------------------
@pytest.mark.airflow
@pytest.mark.timeout(600)
def test_the_dag_advances_a_stage_and_then_holds(lake, trained, tmp_path, new_airflow):  # noqa: F811
    from jobs import orchestration as o
    from jobs.models.registry import CANARY_STAGE_AT_TAG, CANARY_TAG, Registry

    register(lake, trained, 5, 0.70, alias="champion")
    v2 = register(lake, trained, 15, 0.80)
    reg = Registry.from_config(lake)
    reg.set_canary_share(MODEL.name, 0.05)
    began = dt.datetime.now(dt.UTC) - HOUR  # the stage began an hour ago, the guards passed since
    reg.client.set_model_version_tag(MODEL.name, v2, CANARY_STAGE_AT_TAG, began.isoformat())
    judged(lake, v2, 0.05, began + dt.timedelta(minutes=10))
    af = new_airflow(tmp_path, lake=lake.lake_root)
    t0 = time.monotonic()
    first = af.dags_test(o.canary_dag_id(MODEL.name), timeout=300)
    took = time.monotonic() - t0
    assert float(tags(lake, v2)[CANARY_TAG]) == 0.25, first.stdout[-3000:]
    second = af.dags_test(o.canary_dag_id(MODEL.name), timeout=300)  # a new stage, not judged: held, not failed
    assert second.returncode == 0 and float(tags(lake, v2)[CANARY_TAG]) == 0.25
    out = second.stdout + second.stderr
    assert "canary held at 0.25 (too early" in out, out[-3000:]
    assert took < 120, f"airflow dags test took {took:.0f}s"
