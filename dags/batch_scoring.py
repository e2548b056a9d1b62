"""batch_scoring: each new feature snapshot -> predictions (champion + shadow challenger) -> validate -> SQL."""

from __future__ import annotations

from airflow.sdk import Asset, Param, dag, task

from jobs import orchestration as o
from jobs.alerts import AirflowNotifier

SNAPSHOTS = Asset(o.asset_uri(o.snapshot_table_name()), group="lockstep")
PREDICTIONS = Asset(o.asset_uri(o.PREDICTIONS), group="lockstep")

DOC = f"""
### batch_scoring

Runs when `features_daily` publishes a validated snapshot (Asset `{SNAPSHOTS.uri}`), for every partition
`ds` named in the triggering events' `extra`; or manually with the `ds` Param. One mapped task per day:

| step | reads | writes |
|---|---|---|
| `partitions` | the triggering Asset events / the `ds` Param | the days to score (XCom) |
| `score` | `{o.snapshot_table_name()}/ds=<ds>`, the registry's `champion` (+ `challenger` in shadow mode) | `predictions/ds=<ds>` (`role` = champion / challenger); skipped while no champion exists |
| `validate_predictions` | `predictions/ds=<ds>` | Data Docs; fails fast (no retry) on bad data |
| `publish_sql` | `predictions/ds=<ds>` | day `ds` of the SQL table `predictions` (one transaction; `LOCKSTEP_SQL_URL`, default SQLite under the lake); Asset `{PREDICTIONS.uri}` |

Scores carry `scored_at` = the snapshot's instant (`ds`+1 00:00 UTC), never the wall clock, so re-scoring a
day with the same models gives the same content fingerprint.
**Params**: `ds`, `shadow` (score the challenger too), `model_name`.
"""


@dag(
    dag_id="batch_scoring",
    schedule=[SNAPSHOTS],
    start_date=o.CDNOW_START,
    catchup=False,
    max_active_runs=1,
    default_args=o.default_args(on_failure_callback=AirflowNotifier()),
    params={
        "ds": Param(
            None,
            type=["null", "string"],
            format="date",
            title="Snapshot day",
            description="Score this day; empty = the days of the triggering snapshot events.",
        ),
        "shadow": Param(True, type="boolean", description="Also score the challenger (role=challenger)."),
        "model_name": Param("repurchase_90d", type="string", pattern=r"^[A-Za-z0-9_.-]+$"),
    },
    doc_md=DOC,
    tags=["lockstep", "scoring"],
)
def batch_scoring():
    @task
    def partitions(params=None, triggering_asset_events=None):
        return o.partitions_to_score(params["ds"], triggering_asset_events)

    @task
    def score(day: str, params=None):
        from airflow.sdk.exceptions import AirflowSkipException

        from jobs.models.registry import CHAMPION, Registry
        from jobs.scoring.batch import score_snapshot

        cfg = o.config()
        registry = Registry.from_config(cfg)
        if registry.alias(params["model_name"], CHAMPION) is None:
            raise AirflowSkipException(f"no champion of {params['model_name']} yet: run the training DAG")
        return o.summary(
            score_snapshot(cfg, day, params["model_name"], shadow=params["shadow"], registry=registry, validate=False)
        )

    @task
    def validate_predictions(day: str):
        from jobs.quality.validate import validate_partition

        with o.data_quality_gate():
            return o.summary(validate_partition(o.config(), o.PREDICTIONS, day, alert=False))

    @task(outlets=[PREDICTIONS])
    def publish_sql(day: str):
        from jobs.scoring.sql import publish_predictions

        return o.summary(publish_predictions(o.config(), day))

    days = partitions()
    scored = score.expand(day=days)
    checked = validate_predictions.expand(day=days)
    published = publish_sql.expand(day=days)
    scored >> checked >> published


batch_scoring()
