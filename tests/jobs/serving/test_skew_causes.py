"""Replayed CDNOW traffic through the service, then the skew job: the right cause on the right features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from jobs.config import Config
from jobs.serving.app import Settings, create_app
from jobs.serving.log import model_wal_dir, publish
from jobs.serving.replay import plan_day, replay
from jobs.serving.store import EmbeddedStore
from jobs.skew.job import CAUSES, SkewThresholdError, run_skew

from . import wrong
from .conftest import DAY, FS, MODEL

N = 300
THIRTY_DAY = {"txn_count_30d", "spend_sum_30d", "spend_mean_30d", "items_sum_30d", "activity_trend_30_90"}
LIFETIME = {"frequency_lifetime", "spend_lifetime"}


@pytest.fixture(scope="session")
def store(lake_cfg):
    return EmbeddedStore.from_lake(lake_cfg, FS)


@pytest.fixture
def serve_and_skew(lake_cfg, lake_events, store, model_source, tmp_path):
    """Run a day of traffic through a service with ``hook``; publish the log; run the skew job."""

    def run(hook=None, mode="fresh", plan=None, fail=True, html=False, allow_unvalidated=True):
        root = tmp_path / "lake"
        root.mkdir()
        for name in ("raw_events", "feature_snapshots"):  # share the inputs, own the outputs
            (root / name).symlink_to(f"{lake_cfg.lake_root}/{name}")
        cfg = run.cfg = Config(lake_root=str(root))
        wal = tmp_path / "wal"
        app = create_app(
            Settings(lake_root=str(root), wal_dir=str(wal), cache_ttl_s=60.0),
            model_source=model_source,
            store=store,
            hook=hook,
            cfg=cfg,
            notifier=alerts.append,
        )
        plan = plan if plan is not None else plan_day(lake_events[0], DAY, N, seed=11, mode=mode)
        with TestClient(app) as client:
            res = replay(client, plan)
        assert (res.status == 200).all(), res.status.value_counts()
        assert publish(cfg, model_wal_dir(wal, MODEL), MODEL, DAY).rows == len(plan)
        try:
            return run_skew(
                cfg,
                DAY,
                model_source=model_source,
                fail=fail,
                html=html,
                notifier=alerts.append,
                allow_unvalidated=allow_unvalidated,  # the shared raw days are not validated
            )
        except SkewThresholdError as exc:
            exc.report.error = str(exc)
            return exc.report

    alerts: list[str] = []
    run.alerts = alerts
    return run


def flagged(report, cause) -> set[str]:
    counts = report.cause_counts()
    return set(counts.index[counts[cause] > 0])


def assert_only(report, cause, required: set, allowed: set | None = None):
    """``cause`` on every required feature, on no feature outside ``allowed``, and no other bug-cause."""
    got = flagged(report, cause)
    assert required <= got, f"{cause} missing on {required - got}"
    assert got <= (allowed or required), f"false {cause} on {got - (allowed or required)}"
    for other in set(CAUSES) - {cause, "late_data"}:
        assert not flagged(report, other), f"unexpected {other} on {flagged(report, other)}"


def test_the_skew_job_refuses_an_unvalidated_serving_log_then_unvalidated_raw_days(serve_and_skew, model_source):
    from jobs.lake import UnvalidatedPartitionError
    from jobs.quality.validate import validate_partition

    logs = f"serving_logs/{MODEL.name}"
    with pytest.raises(UnvalidatedPartitionError) as err:
        serve_and_skew(allow_unvalidated=False)
    assert str(err.value).startswith(
        f"table '{logs}' ds={DAY}: not validated (run `lockstep validate serving_logs --table {logs} --ds {DAY}`); "
        "to build from it anyway for exploration pass --allow-unvalidated"
    )
    cfg = serve_and_skew.cfg
    report = cfg.lake().table(MODEL.skew_report_table)
    assert not report.exists(DAY)  # refused before any work
    assert validate_partition(cfg, "serving_logs", DAY, model=MODEL.name, alert=False, docs=False).success
    with pytest.raises(UnvalidatedPartitionError, match=f"table '{FS.source.table}' ds=.*: not validated"):
        run_skew(cfg, DAY, model_source=model_source, fail=False, html=False)
    assert not report.exists(DAY)
    rep = run_skew(cfg, DAY, model_source=model_source, fail=False, html=False, allow_unvalidated=True)
    assert (
        cfg.lake()
        .table(MODEL.skew_report_table)
        .manifest(DAY)
        .producer["unvalidated_inputs"][0]
        .startswith(f"{FS.source.table}/ds=")
    )
    assert rep.ds == DAY


def test_fresh_mode_is_bit_identical(serve_and_skew):
    rep = serve_and_skew(html=True)
    assert not getattr(rep, "error", None), rep.error
    counts = rep.cause_counts()
    for cause in ("logic_skew", "staleness", "version_skew", "degraded"):
        assert counts[cause].sum() == 0, counts[counts[cause] > 0]
    # The day's own purchases (ingested at the end of the day) and the injected late events are late data.
    assert counts.loc["txn_count_7d", "late_data"] > 0
    # Bit-identical: where nothing arrived late, served == known_at offline, with ==.
    rows = rep.rows
    for f in FS.features:
        s, k = rows[f.name].to_numpy(dtype=float), rows["known_at__" + f.name].to_numpy(dtype=float)
        same = (s == k) | (np.isnan(s) & np.isnan(k))
        assert same.all(), f"{f.name}: {(~same).sum()} rows differ from known_at"
    score = rep.feature("__score__")
    assert score["rescore_max_abs_diff"] == 0.0 and score["rescore_mismatches"] == 0
    assert rep.html_path and "Training-serving skew" in Path(rep.html_path).read_text()
    assert len(rep.rows) == N
    # Trained known_at: late data is what training saw too, so a correct service shows no skew at all;
    # the late rows are freshness, counted exactly.
    head = rep.headline()
    assert head["mismatches"] == 0 and head["rows_mismatching"] == 0
    assert (rep.table["mismatches"] == 0).all()
    assert head["rows_late"] == rep.freshness[0]["rows_in_flight"] > 0
    assert head["late"] == int(counts["late_data"].sum())
    # The served population is not the training snapshot's: major drift alerts (the job goes on), moderate warns.
    assert "recency_days: psi=0.5078 >= 0.25 (major drift)" in rep.drift_alerts
    assert any("recency_days: psi=0.5078" in a for a in serve_and_skew.alerts)
    assert "txn_count_30d: moderate drift, psi=0.1725 >= 0.1 (major at 0.25)" in rep.warnings


def test_materialized_mode_is_staleness(serve_and_skew):
    rep = serve_and_skew(mode="materialized")
    assert not flagged(rep, "logic_skew") and not flagged(rep, "version_skew")
    stale = flagged(rep, "staleness")
    assert {"recency_days", "tenure_days"} <= stale
    assert rep.feature("recency_days")["staleness"] > N // 2  # every customer with history is a day stale


def test_seven_day_window_for_thirty_is_logic_skew_on_30d_features(serve_and_skew):
    rep = serve_and_skew(hook=wrong.window_7_for_30(FS))
    assert_only(rep, "logic_skew", THIRTY_DAY)
    assert "logic_skew_rate" in rep.error and "txn_count_30d" in rep.error
    assert serve_and_skew.alerts and "txn_count_30d" in serve_and_skew.alerts[-1]


def test_nulls_imputed_as_zero_is_logic_skew_on_mean_and_min(serve_and_skew):
    rep = serve_and_skew(hook=wrong.nulls_as_zero)
    required = {"spend_mean_30d", "spend_mean_90d", "spend_mean_365d", "spend_min_90d"}
    # max differs only for a window whose amounts are all null (null -> 0.0)
    assert_only(rep, "logic_skew", required, required | {"spend_max_90d"})
    for clean in ("spend_sum_90d", "spend_lifetime", "txn_count_90d", "price_per_item_365d"):
        assert rep.feature(clean)["logic_skew"] == 0


def test_timezone_shift_is_logic_skew_on_time_features(serve_and_skew):
    rep = serve_and_skew(hook=wrong.timezone_shift)
    allowed = set(FS.feature_names) - LIFETIME
    assert_only(rep, "logic_skew", {"recency_days", "tenure_days"}, allowed)
    rd = rep.rows.loc[rep.causes["recency_days"] == "logic_skew"]
    shift = rd["recency_days"] - rd["known_at__recency_days"]
    # served 4 (EDT) or 5 (EST, purchases before 1997-04-06) hours older
    assert np.isclose(shift.to_numpy()[:, None], [4 / 24, 5 / 24]).any(axis=1).all()


def test_stale_cache_is_staleness(serve_and_skew):
    warm = pd.Timestamp(DAY, tz="UTC") - pd.Timedelta(days=2)  # = snapshot of DAY-3
    rep = serve_and_skew(hook=wrong.StaleCache(warm), fail=False)
    assert {"recency_days", "tenure_days", "txn_count_7d"} <= flagged(rep, "staleness")
    assert not flagged(rep, "logic_skew") and not flagged(rep, "version_skew")


def test_changed_definition_with_old_fingerprint_is_version_skew(serve_and_skew, tmp_path, capsys):
    rep = serve_and_skew(hook=wrong.old_definition(FS))
    assert_only(rep, "version_skew", {"spend_max_90d"})
    assert any("unknown to the registry" in n for n in rep.notes)
    assert "version_skew_rate" in rep.error
    # The CLI fails the job with the message and alerts through jobs.alerts (the alerts log).
    import argparse
    import json

    from jobs.cli.skew import add_parsers

    parser = argparse.ArgumentParser()
    parser.add_argument("--lake")
    add_parsers(parser.add_subparsers())
    args = parser.parse_args(["--lake", str(tmp_path / "lake"), "skew", "--ds", DAY, "--allow-unvalidated"])
    assert args.func(args) == 1
    assert "spend_max_90d: version_skew_rate" in capsys.readouterr().out
    lines = [json.loads(x) for x in (tmp_path / "lake" / "_alerts" / "alerts.jsonl").read_text().splitlines()]
    assert any("spend_max_90d: version_skew_rate" in x["reason"] for x in lines)


def test_late_arriving_events_are_late_data(serve_and_skew, lake_events):
    late_customers = lake_events[1]
    rng = np.random.default_rng(5)
    t0 = pd.Timestamp(DAY, tz="UTC")
    plan = pd.DataFrame(
        {
            "request_id": [f"late-{c}" for c in late_customers],
            "entity_id": late_customers,
            "request_time": t0 + pd.to_timedelta(rng.integers(0, 86_400_000_000, len(late_customers)), unit="us"),
        }
    )
    rep = serve_and_skew(plan=plan)
    assert not getattr(rep, "error", None)
    c = rep.causes
    n = len(late_customers)
    for f in ("txn_count_7d", "txn_count_30d", "frequency_lifetime", "spend_lifetime", "recency_days"):
        assert (c[f] == "late_data").sum() == n, f
    # The late purchase changes nothing about the first purchase: tenure is clean.
    assert (c["tenure_days"] == "").all()
    assert (c.to_numpy() != "logic_skew").all()
    # Freshness, not skew: every request saw its entity's late purchase in flight, 3 d 12 h late.
    assert rep.headline()["mismatches"] == 0 and rep.headline()["rows_late"] == n
    fresh = rep.freshness[0]
    assert fresh["rows_in_flight"] == n and fresh["late_data"]["txn_count_7d"] == n
    assert fresh["lag_s"] == {
        "events": n,
        "min": 302400.0,
        "p50": 302400.0,
        "p90": 302400.0,
        "p99": 302400.0,
        "max": 302400.0,
    }
