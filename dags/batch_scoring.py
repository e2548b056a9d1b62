"""batch_scoring__<model>: one DAG per declared model — once every feature set it joins has a new snapshot,
predictions (champion + shadow challenger) -> validate -> SQL."""

from __future__ import annotations

from airflow.sdk import Asset, Param, dag, task

from jobs import orchestration as o
from jobs.alerts import AirflowNotifier


def doc(model, snapshots: list[Asset], predictions: Asset) -> str:
    assets = ", ".join(f"`{a.uri}`" for a in snapshots)
    reads = ", ".join(f"`{o.snapshot_table_name(fs.name)}/ds=<ds>`" for fs in model.feature_sets)
    return f"""
### {o.scoring_dag_id(model.name)}

Generated from the model declaration `{model.name}`. Runs once every feature set the model joins has
published a validated snapshot (Assets {assets}), for every partition `ds` named in the triggering events'
`extra`; or manually with the `ds` Param. One mapped task per day:

| step | reads | writes |
|---|---|---|
| `partitions` | the triggering Asset events / the `ds` Param | the days to score (XCom) |
| `score` | {reads}, the registry's `champion` of `{model.name}` (+ `challenger` in shadow mode) | `{model.predictions_table}/ds=<ds>` (`role` = champion / challenger); skipped while no champion exists |
| `validate_predictions` | `{model.predictions_table}/ds=<ds>` | Data Docs; fails fast (no retry) on bad data |
| `publish_sql` | `{model.predictions_table}/ds=<ds>` | day `ds` of the SQL table `{model.sql_table_name}` (one transaction; `LOCKSTEP_SQL_URL`, default SQLite under the lake); Asset `{predictions.uri}` |

Scores carry `scored_at` = the snapshot's instant (`ds`+1 00:00 UTC), never the wall clock, so re-scoring a
day with the same models gives the same content fingerprint.
**Params**: `ds`, `shadow` (score the challenger too).
"""


def batch_scoring_dag(model):
    name = model.name
    snapshots = [Asset(o.asset_uri(o.snapshot_table_name(fs.name)), group="lockstep") for fs in model.feature_sets]
    predictions = Asset(o.asset_uri(model.predictions_table), group="lockstep")

    @dag(
        dag_id=o.scoring_dag_id(name),
        schedule=snapshots,  # all of them: a run starts once every set has a new snapshot
        start_date=o.span_dates(o.model_source(model))[0],
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
        },
        doc_md=doc(model, snapshots, predictions),
        tags=["lockstep", "scoring", f"model:{name}"],
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
            if registry.alias(name, CHAMPION) is None:
                raise AirflowSkipException(f"no champion of {name} yet: run {o.training_dag_id(name)}")
            with o.data_quality_gate():  # an unvalidated snapshot fails at once, not retried
                manifest = score_snapshot(cfg, day, name, shadow=params["shadow"], registry=registry, validate=False)
            return o.summary(manifest)

        @task
        def validate_predictions(day: str):
            from jobs.quality.validate import validate_partition

            with o.data_quality_gate():
                return o.summary(validate_partition(o.config(), o.PREDICTIONS, day, model=name, alert=False))

        @task(outlets=[predictions])
        def publish_sql(day: str):
            from jobs.scoring.sql import publish_predictions

            with o.data_quality_gate():
                return o.summary(publish_predictions(o.config(), day, name))

        days = partitions()
        scored = score.expand(day=days)
        checked = validate_predictions.expand(day=days)
        published = publish_sql.expand(day=days)
        scored >> checked >> published

    return batch_scoring()


REPO = o.repo()
DAGS = {o.scoring_dag_id(m.name): batch_scoring_dag(m) for m in REPO.models.values()}
