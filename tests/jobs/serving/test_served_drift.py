"""Served-feature drift in the running service (``jobs.serving.drift``): the PSI of the vectors the
champion was served against its training features, judged off the request path; a feature past the
model's ``drift_psi`` is alerted once per champion version and counted."""

from __future__ import annotations

import re
import time
from pathlib import Path

from jobs.serving.log import model_wal_dir, read_wal
from jobs.serving.model import StaticSource
from jobs.serving.replay import plan_day

from .conftest import DAY, MODEL, fresh_alerts
from .test_metrics import samples, value
from .test_model_swap import lake  # noqa: F401 - fixture
from .test_shadow import champion, client

SHIFTED = "tenure_days"


def bodies(lake_events, n: int = 120) -> list[dict]:
    plan = plan_day(lake_events[0], DAY, n, seed=11)
    return [
        {"entity_id": int(e), "request_time": t.isoformat(), "request_id": f"d{i}"}
        for i, (e, t) in enumerate(zip(plan.entity_id, plan.request_time))
    ]


def serve(cfg, tmp_path, reference, requests, wait: float = 20.0, **settings):
    """Serve ``requests`` with the champion whose training features are ``reference``; the health
    once the drift thread has judged the window, the metrics and the alerts."""
    source = StaticSource(champion(), training={(MODEL.name, "3"): reference})
    settings = {"drift_eval_s": 0.1, "drift_min_rows": 100, "drift_window": 200, **settings}
    with client(cfg, tmp_path, source, **settings) as c:
        for b in requests:
            assert c.post("/predict", json=b).status_code == 200
        deadline = time.monotonic() + wait
        while c.get("/health").json()["served_drift"] is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # several more judgements of the same window: still one alert per feature
        health = c.get("/health").json()
        got = samples(c.get("/metrics").text)
    return health, got, fresh_alerts(Path(cfg.lake_root) / "_alerts" / "alerts.jsonl")


def test_a_served_feature_past_drift_psi_is_alerted_once_and_counted(lake, lake_events, tmp_path):  # noqa: F811
    requests = bodies(lake_events)
    health, _, _ = serve(lake, tmp_path / "warm", None, requests, wait=1.0)  # no reference: nothing judged
    assert health["served_drift"] is None
    served = read_wal(model_wal_dir(tmp_path / "warm" / "wal", MODEL), MODEL)
    # the reference = exactly what is served: no drift (PSI 0 for every feature)
    same, got, alerts = serve(lake, tmp_path / "same", served, requests)
    assert same["served_drift"]["rows"] == 120 and same["served_drift"]["drifted"] == []
    assert all(v in (0.0, None) for v in same["served_drift"]["psi"].values()), same["served_drift"]["psi"]
    assert value(got, "lockstep_serving_served_drift_total", model=MODEL.name, feature=SHIFTED) == 0
    assert not [a for a in alerts if a["what"] == "served drift"]

    # training saw tenures 10,000 days longer than anything served: that feature (only) drifted
    shifted = served.assign(**{SHIFTED: served[SHIFTED] + 10_000})
    few, _, _ = serve(lake, tmp_path / "few", shifted, requests, wait=1.0, drift_min_rows=121)
    assert few["served_drift"] is None  # fewer vectors than drift_min_rows: not judged
    drifted, got, alerts = serve(lake, tmp_path / "shifted", shifted, requests)
    report = drifted["served_drift"]
    assert report["version"] == "3" and report["drifted"] == [SHIFTED]
    assert report["psi"][SHIFTED] >= MODEL.drift_psi
    assert value(got, "lockstep_serving_served_drift_total", model=MODEL.name, feature=SHIFTED) == 1
    mine = [a for a in alerts if a["what"] == "served drift"]
    assert [(a["title"], a["dataset"]) for a in mine] == [(f"served drift: {MODEL.name} v3", MODEL.name)]
    assert f"{SHIFTED}: psi=" in mine[0]["reason"] and "drift_psi 0.25" in mine[0]["reason"]
    judged = int(re.search(r"over the last (\d+) requests", mine[0]["reason"]).group(1))
    assert 100 <= judged <= 120  # judged while the requests came in, from drift_min_rows on
