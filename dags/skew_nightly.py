"""skew_nightly__<model>: one DAG per declared model — publish the day's serving log -> validate it ->
training-serving skew report (alert on a breach)."""

from __future__ import annotations

from airflow.sdk import Asset, CronDataIntervalTimetable, Param, dag, task

from jobs import orchestration as o
from jobs.alerts import AirflowNotifier


def doc(model, reports: Asset) -> str:
    return f"""
### {o.skew_dag_id(model.name)}

Generated from the model declaration `{model.name}`.
One run per day `ds` (the run's logical date; the run starts once the day is over): what the serving
service answered on `ds` against what the same feature code computes offline.

| step | reads | writes |
|---|---|---|
| `publish_serving_log` | the service's write-ahead log (`wal_dir` Param, else `{o.SERVING_WAL_ENV}`, else `{o.DEFAULT_SERVING_WAL_DIR}`): records whose request time falls on `ds` | `{o.SERVING_LOGS}/ds=<ds>` — only when the WAL holds records the partition lacks; a re-run with nothing new keeps the partition (same fingerprint). No traffic logged that day: the run is *skipped* |
| `validate_serving_log` | `{o.SERVING_LOGS}/ds=<ds>` | Data Docs; fails fast (no retry) on bad data |
| `skew` | `{o.SERVING_LOGS}/ds=<ds>`, the model's sources up to `ds`+`late_days`, the snapshots of the `lookback_days` before `ds`, the registry's champion of `{model.name}` (re-scoring, training-set drift) | `{o.SKEW_REPORTS}/ds=<ds>` (one row per feature + `__score__`: mismatches by cause, PSI, JS divergence in bits), the page `<lake>/_reports/skew/ds=<ds>.html`; an event on the Asset `{reports.uri}` with `extra.ds` and `extra.report` |

A crossed per-feature threshold (default: any logic or version skew, any re-scoring difference) fails
`skew` at once, without retries — re-computing the same day gives the same breach — and the failure
alert names every breach and the report page. The report partition and page are written before it fails.
Major drift (PSI >= the model's `drift_psi`, default 0.25) is alerted at level error without failing the
task; moderate drift (>= `drift_psi_moderate`, 0.1) and a champion trained more than `champion_max_age_days`
(30) before `ds` are warnings (report lines, one warning-level alert).

**Params**: `wal_dir`; `thresholds` (JSON, e.g. `{{"*": {{"logic_skew_rate": 0}},
"<feature>": {{"psi": 0.25}}}}`, merged over the model's declared thresholds and the defaults); `lookback_days`, `late_days`; `engine`
(offline recomputation: local, dask, spark; empty = `LOCKSTEP_ENGINE`). Lake root: `LOCKSTEP_LAKE`;
registry: `LOCKSTEP_MLFLOW_TRACKING_URI` (default SQLite under the lake).
Catch-up is off: backfills are explicit (UI "Backfill" dialog, `airflow backfill create`).
"""


def skew_nightly_dag(model):
    name = model.name
    reports = Asset(o.asset_uri(o.SKEW_REPORTS), group="lockstep")
    cron = o.cron_of(model.schedule.skew, model)

    @dag(
        dag_id=o.skew_dag_id(name),
        schedule=CronDataIntervalTimetable(cron, timezone="UTC") if cron else None,
        **o.daily_dag_kwargs(o.model_source(model), on_failure_callback=AirflowNotifier()),
        params={
            "wal_dir": Param(
                None,
                type=["null", "string"],
                title="Serving WAL directory",
                description=f"Where the service writes its log; empty = {o.SERVING_WAL_ENV}, "
                f"else {o.DEFAULT_SERVING_WAL_DIR}.",
            ),
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
        doc_md=doc(model, reports),
        tags=["lockstep", "serving", "skew", f"model:{name}"],
    )
    def skew_nightly():
        @task
        def publish_serving_log(ds=None, params=None):
            return o.publish_serving_log(o.config(), name, o.partition(ds), params["wal_dir"])

        @task
        def validate_serving_log(ds=None):
            from jobs.quality.validate import validate_partition

            with o.data_quality_gate():
                return o.summary(
                    validate_partition(o.config(), o.SERVING_LOGS, o.partition(ds), model=name, alert=False)
                )

        @task(outlets=[reports])
        def skew(ds=None, params=None, outlet_events=None):
            from jobs.serving.model import RegistrySource
            from jobs.skew.job import CAUSES, run_skew

            cfg, day = o.config(params["engine"]), o.partition(ds)
            with o.skew_gate(), o.data_quality_gate():  # unvalidated input: fail at once, not retried
                # The failure callback sends a breach's alert (with the breaches and the page): no second one
                # here. Major drift and warnings fail nothing: run_skew alerts them itself.
                rep = run_skew(
                    cfg,
                    day,
                    model=name,
                    model_source=RegistrySource(cfg, name),
                    thresholds=params["thresholds"],
                    lookback_days=params["lookback_days"],
                    late_days=params["late_days"],
                    alert_breaches=False,
                )
            # The Asset event carries the partition and the page, for whatever consumes the reports.
            outlet_events[reports].extra = {"ds": day, "table": model.skew_report_table, "report": rep.html_path}
            causes = rep.table.set_index("feature")[list(CAUSES)].sum()
            return {
                "ds": day,
                "rows": len(rep.rows),
                "report": rep.html_path,
                "skew_mismatches": rep.headline()["mismatches"],
                "differences_by_cause": {k: int(v) for k, v in causes.items()},
                "drift_alerts": rep.drift_alerts,
                "warnings": rep.warnings,
                "notes": rep.notes[:10],
            }

        publish_serving_log() >> validate_serving_log() >> skew()

    return skew_nightly()


REPO = o.repo()
DAGS = {o.skew_dag_id(m.name): skew_nightly_dag(m) for m in REPO.models.values()}
