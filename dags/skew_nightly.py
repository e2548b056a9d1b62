"""skew_nightly: publish the day's serving log -> validate it -> training-serving skew report (alert on a breach)."""

from __future__ import annotations

from airflow.sdk import Asset, CronDataIntervalTimetable, Param, dag, task

from jobs import orchestration as o
from jobs.alerts import AirflowNotifier

SKEW_REPORTS = Asset(o.asset_uri(o.SKEW_REPORTS), group="lockstep")

DOC = f"""
### skew_nightly

One run per day `ds` (the run's logical date; the run starts once the day is over): what the serving
service answered on `ds` against what the same feature code computes offline.

| step | reads | writes |
|---|---|---|
| `publish_serving_log` | the service's write-ahead log (`wal_dir` Param, else `{o.SERVING_WAL_ENV}`, else `{o.DEFAULT_SERVING_WAL_DIR}`): records whose request time falls on `ds` | `{o.SERVING_LOGS}/ds=<ds>` — only when the WAL holds records the partition lacks; a re-run with nothing new keeps the partition (same fingerprint). No traffic logged that day: the run is *skipped* |
| `validate_serving_log` | `{o.SERVING_LOGS}/ds=<ds>` | Data Docs; fails fast (no retry) on bad data |
| `skew` | `{o.SERVING_LOGS}/ds=<ds>`, `raw_events` up to `ds`+`late_days`, the snapshots of the `lookback_days` before `ds`, the registry's champion of `model_name` (re-scoring, training-set drift) | `{o.SKEW_REPORTS}/ds=<ds>` (one row per feature + `__score__`: mismatches by cause, PSI, JS divergence in bits), the page `<lake>/_reports/skew/ds=<ds>.html`; an event on the Asset `{SKEW_REPORTS.uri}` with `extra.ds` and `extra.report` |

A crossed per-feature threshold (default: any logic or version skew, any re-scoring difference) fails
`skew` at once, without retries — re-computing the same day gives the same breach — and the failure
alert names every breach and the report page. The report partition and page are written before it fails.

**Params**: `wal_dir`; `model_name`; `thresholds` (JSON, e.g. `{{"*": {{"logic_skew_rate": 0}},
"recency_days": {{"psi": 0.25}}}}`, merged over the defaults); `lookback_days`, `late_days`; `engine`
(offline recomputation: local, dask, spark; empty = `LOCKSTEP_ENGINE`). Lake root: `LOCKSTEP_LAKE`;
registry: `LOCKSTEP_MLFLOW_TRACKING_URI` (default SQLite under the lake).
Catch-up is off: backfills are explicit (UI "Backfill" dialog, `airflow backfill create`).
"""


@dag(
    dag_id="skew_nightly",
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    **o.daily_dag_kwargs(on_failure_callback=AirflowNotifier()),
    params={
        "wal_dir": Param(
            None,
            type=["null", "string"],
            title="Serving WAL directory",
            description=f"Where the service writes its log; empty = {o.SERVING_WAL_ENV}, "
            f"else {o.DEFAULT_SERVING_WAL_DIR}.",
        ),
        "model_name": Param("repurchase_90d", type="string", pattern=r"^[A-Za-z0-9_.-]+$"),
        "thresholds": Param(
            None,
            type=["null", "object"],
            title="Skew thresholds",
            description="Per-feature maxima merged over the defaults; '*' = every feature.",
        ),
        "lookback_days": Param(3, type="integer", minimum=0, maximum=30),
        "late_days": Param(3, type="integer", minimum=0, maximum=30),
        "engine": Param(None, **o.engine_param_schema()),
    },
    doc_md=DOC,
    tags=["lockstep", "serving", "skew"],
)
def skew_nightly():
    @task
    def publish_serving_log(ds=None, params=None):
        from pathlib import Path

        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from features import registry
        from jobs.serving.log import publish, read_wal

        cfg, day = o.config(), o.partition(ds)
        fs = registry.get(o.FEATURE_SET)
        wal_dir = o.serving_wal_dir(params["wal_dir"])
        table = cfg.lake().table(o.SERVING_LOGS)
        published = table.read(day, columns=["request_id"])["request_id"] if table.exists(day) else None
        if published is None and not Path(wal_dir).is_dir():
            raise AirflowFailException(
                f"no serving WAL at {wal_dir!r} and no {o.SERVING_LOGS}/ds={day}: "
                f"set {o.SERVING_WAL_ENV} (absolute) or the wal_dir Param"
            )
        wal = read_wal(wal_dir, fs) if Path(wal_dir).is_dir() else None
        wal_ids = [] if wal is None else wal.loc[wal["request_time"].dt.strftime("%Y-%m-%d") == day, "request_id"]
        action = o.serving_log_action(day, wal_ids, published)
        if action == "empty":
            raise AirflowSkipException(f"the service logged no request on {day} (WAL {wal_dir})")
        manifest = publish(cfg, wal_dir, fs, day) if action == "publish" else table.manifest(day)
        return {"action": action, **o.summary(manifest)}

    @task
    def validate_serving_log(ds=None):
        from jobs.quality.validate import validate_partition

        with o.data_quality_gate():
            return o.summary(validate_partition(o.config(), o.SERVING_LOGS, o.partition(ds), alert=False))

    @task(outlets=[SKEW_REPORTS])
    def skew(ds=None, params=None, outlet_events=None):
        from jobs.serving.model import RegistrySource
        from jobs.skew.job import CAUSES, run_skew

        cfg, day = o.config(params["engine"]), o.partition(ds)
        with o.skew_gate():
            # The failure callback sends the alert (with the breaches and the page): no second one here.
            rep = run_skew(
                cfg,
                day,
                feature_set=o.FEATURE_SET,
                model_source=RegistrySource(cfg, params["model_name"]),
                thresholds=params["thresholds"],
                lookback_days=params["lookback_days"],
                late_days=params["late_days"],
                notifier=lambda message: None,
            )
        # The Asset event carries the partition and the page, for whatever consumes the reports.
        outlet_events[SKEW_REPORTS].extra = {"ds": day, "table": o.SKEW_REPORTS, "report": rep.html_path}
        causes = rep.table.set_index("feature")[list(CAUSES)].sum()
        return {
            "ds": day,
            "rows": len(rep.rows),
            "report": rep.html_path,
            "mismatches_by_cause": {k: int(v) for k, v in causes.items()},
            "notes": rep.notes[:10],
        }

    publish_serving_log() >> validate_serving_log() >> skew()


skew_nightly()
