"""features_daily__<source>: one DAG per declared source — land a day, validate it, build that day's snapshot
of every feature set over the source, validate each, publish each set's Asset."""

from __future__ import annotations

from airflow.sdk import Asset, CronDataIntervalTimetable, Metadata, Param, dag, task

from jobs import orchestration as o
from jobs.alerts import AirflowNotifier


def doc(source, feature_sets) -> str:
    start, end = o.span_dates(source)
    span = f"{start.date()}..{end.date()}" if end else f"from {start.date()}"
    lander = source.lander
    where = getattr(lander, "path", "") or f"the `{getattr(lander, 'parser', '?')}` parser's default input"
    rows = "\n".join(
        f"| `build_snapshot__{fs.name}` | `{source.table}/ds=<first>..<ds>` | `{o.snapshot_table_name(fs.name)}/ds=<ds>`: "
        f"every `{fs.entity}` as known at `ds`+1 00:00 UTC |\n"
        f"| `validate_snapshot__{fs.name}` | the snapshot partition | Data Docs; on success, an event on the Asset "
        f"`{o.asset_uri(o.snapshot_table_name(fs.name))}` with `extra.ds` |"
        for fs in feature_sets
    )
    return f"""
### {o.features_dag_id(source.name)}

Generated from the source declaration `{source.name}` ({source.description or "no description"}); one run per
day `ds` (the run's logical date; the run starts once the day is over), over the source's days ({span}).

| step | reads | writes |
|---|---|---|
| `land_raw` | {where} (lander `{type(lander).__name__}`), rows ingested on `ds` | `{source.table}/ds=<ds>` |
| `validate_raw` | `{source.table}/ds=<ds>` | Data Docs (suite derived from the source); fails fast (no retry) on bad data; Asset `{o.asset_uri(source.table)}` |
{rows}

Every task replaces its own partition whole, so re-running or backfilling a day is safe and gives the same
content fingerprint. `build_snapshot__*` waits for the previous day's snapshot (`depends_on_past`): a
snapshot reads every raw day before it, so days are built in order and a bad day stops the ones after it.
Backfill the raw history from the data's first day ({start.date()}), or land it first with
`lockstep land --source {source.name} --ds {start.date()} --to <day before>`.

**Range builds.** `build_snapshot__*` of day D skips when D's snapshot is validated and was built from
today's inputs (raw fingerprint, feature set, kernel). Otherwise it builds D *and* the following days whose
raw partition is already landed and validated and whose snapshot is missing or stale (at most `range_days`)
in ONE engine pass over the raw history, each day published as its own gated partition — the same rows and
fingerprints as day-by-day builds. So a Backfill over raw history that was landed first costs one pass: the
first run builds the range, the later runs' build tasks find their day up to date. A daily run finds only
its own day.

**Params**: `engine` (local, dask, spark; empty = `LOCKSTEP_ENGINE`); `path` (the input to land from instead
of the declared one; empty = the declaration's); `range_days` (days per range build, default 90). Lake root: `LOCKSTEP_LAKE`.
Catch-up is off: backfills are explicit (UI "Backfill" dialog, `airflow backfill create`, REST). Because
of `depends_on_past`, a backfill must reprocess "Missing and Errored Runs" or "All Runs" (Airflow refuses
"Missing Runs" only).
Failures go to the alert notifier (alerts log; e-mail/Slack when configured).
"""


def features_daily_dag(source, feature_sets):
    name = source.name
    raw_asset = Asset(o.asset_uri(source.table), group="lockstep")

    @dag(
        dag_id=o.features_dag_id(name),
        schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
        **o.daily_dag_kwargs(source, on_failure_callback=AirflowNotifier()),
        params={
            "engine": Param(None, **o.engine_param_schema()),
            "path": Param(
                None,
                type=["null", "string"],
                title="Input to land from",
                description=f"Path (or fsspec URL) to land {name} from; empty = the declared one.",
            ),
            "range_days": Param(
                90,
                type="integer",
                minimum=1,
                title="Days per range build",
                description="A build also covers up to this many following days whose raw partition is "
                "landed and validated and whose snapshot is missing or stale, in one engine pass; 1 = this day only.",
            ),
        },
        doc_md=doc(source, feature_sets),
        tags=["lockstep", "features", f"source:{name}"],
    )
    def features_daily():
        @task
        def land_raw(ds=None, params=None):
            return o.summary(o.land_day(o.config(), name, o.partition(ds), params.get("path")))

        @task(outlets=[raw_asset])
        def validate_raw(ds=None):
            from jobs.quality.validate import validate_partition

            with o.data_quality_gate():
                return o.summary(
                    validate_partition(o.config(), o.RAW_EVENTS, o.partition(ds), source=name, alert=False)
                )

        validated = land_raw() >> validate_raw()
        for fs in feature_sets:
            validated >> snapshot_tasks(fs.name)

    return features_daily()


def snapshot_tasks(fs_name: str):
    """``build_snapshot__<set>`` -> ``validate_snapshot__<set>`` (outlet: the set's Asset); returns the first."""
    table = o.snapshot_table_name(fs_name)
    asset = Asset(o.asset_uri(table), group="lockstep")

    @task(task_id=f"build_snapshot__{fs_name}", depends_on_past=True)
    def build_snapshot(ds=None, params=None):
        from jobs.snapshots import build_snapshot_backfill

        cfg = o.config(params["engine"])
        with o.data_quality_gate():  # unvalidated raw days fail at once, not retried
            return o.summary(build_snapshot_backfill(cfg, o.partition(ds), fs_name, max_days=params["range_days"]))

    @task(task_id=f"validate_snapshot__{fs_name}", outlets=[asset])
    def validate_snapshot(ds=None):
        from jobs.quality.validate import validate_partition

        day = o.partition(ds)
        with o.data_quality_gate():
            validate_partition(o.config(), o.FEATURE_SNAPSHOTS, day, feature_set=fs_name, alert=False)
        # The Asset event carries the partition, so batch scoring scores exactly this day.
        yield Metadata(asset, {"ds": day, "table": table})

    first = build_snapshot()
    first >> validate_snapshot()
    return first


REPO = o.repo()
DAGS = {o.features_dag_id(s.name): features_daily_dag(s, REPO.feature_sets_of(s)) for s in REPO.sources.values()}
