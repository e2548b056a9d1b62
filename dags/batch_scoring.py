"""batch_scoring__<model>: one DAG per declared model — on every new snapshot of a feature set it joins,
predictions (champion + shadow challenger) of every day that is due -> validate -> SQL."""

from __future__ import annotations

from airflow.sdk import Asset, AssetAny, Param, dag, task

from jobs import orchestration as o
from jobs.alerts import AirflowNotifier


def doc(model, snapshots: list[Asset], predictions: Asset) -> str:
    assets = ", ".join(f"`{a.uri}`" for a in snapshots)
    reads = ", ".join(f"`{o.snapshot_table_name(fs.name)}/ds=<ds>`" for fs in model.feature_sets)
    return f"""
### {o.scoring_dag_id(model.name)}

Generated from the model declaration `{model.name}`. Runs on every validated snapshot a feature set the
model joins publishes (any of the Assets {assets}) and scores every day due: named in the `extra.ds` of
an event of those Assets, with every set's snapshot validated (or, built from unvalidated input, announced
after it was published), and no predictions built from the current snapshots yet (nor a failed attempt). So a day is scored exactly once even when
Airflow hands its event to no run (Airflow 3.3 drops events that land while a run is being created or
is running; see the README); or manually with the `ds` Param (that day, unconditionally). One mapped
task per day:

| step | reads | writes |
|---|---|---|
| `partitions` | the `ds` Param, or every event of the snapshot Assets (`inlet_events`) and the lake's manifests | the days due (XCom; empty: nothing to do) |
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
        # any of them: a day is due once every set's snapshot of it is validated, which the run checks;
        # waiting for all of them would leave a day unscored when its last event is consumed by no run
        schedule=AssetAny(*snapshots),
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
                description="Score this day (even if scored); empty = every day the snapshot events name that is due.",
            ),
            "shadow": Param(True, type="boolean", description="Also score the challenger (role=challenger)."),
        },
        doc_md=doc(model, snapshots, predictions),
        tags=["lockstep", "scoring", f"model:{name}"],
    )
    def batch_scoring():
        @task(inlets=snapshots)
        def partitions(params=None, triggering_asset_events=None, inlet_events=None):
            if params["ds"]:
                return o.partitions_to_score(params["ds"], None)
            cfg = o.config()
            tables = [o.snapshot_table_name(fs.name) for fs in model.feature_sets]
            announced = {t: list(inlet_events[a]) for t, a in zip(tables, snapshots, strict=True)}

            def states(days):
                found = o.scoring_states(cfg, model, days, announced)
                for state in sorted(set(found.values())):  # in the task log: why a day is (not) scored
                    print(f"{state}: {sorted(d for d, v in found.items() if v == state)}")
                return found

            return o.partitions_to_score(None, triggering_asset_events, announced, states)

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
