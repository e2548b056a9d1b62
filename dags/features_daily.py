"""features_daily: land a CDNOW day, validate it, build that day's feature snapshot, validate it."""

from __future__ import annotations

from airflow.sdk import Asset, CronDataIntervalTimetable, Metadata, Param, dag, task

from jobs import orchestration as o
from jobs.alerts import AirflowNotifier

SNAPSHOTS = Asset(o.asset_uri(o.snapshot_table_name()), group="lockstep")

DOC = f"""
### features_daily

One run per day `ds` (the run's logical date; the run starts once the day is over).

| step | reads | writes |
|---|---|---|
| `land_raw` | the shipped CDNOW log (`jobs/ingest/data/CDNOW_master.txt.gz`), rows ingested on `ds` | `raw_events/ds=<ds>` |
| `validate_raw` | `raw_events/ds=<ds>` | Data Docs; fails fast (no retry) on bad data |
| `build_snapshot` | `raw_events/ds=<first>..<ds>` | `{o.snapshot_table_name()}/ds=<ds>`: every customer as known at `ds`+1 00:00 UTC |
| `validate_snapshot` | the snapshot partition | Data Docs; on success, an event on the Asset `{SNAPSHOTS.uri}` with `extra.ds` |

Every task replaces its own partition whole, so re-running or backfilling a day is safe and gives the same
content fingerprint. `build_snapshot` waits for the previous day's snapshot (`depends_on_past`): a snapshot
reads every raw day before it, so days are built in order and a bad day stops the ones after it.
Backfill the raw history from the data's first day (1997-01-01), or land it first with
`lockstep ingest-cdnow --to <day before>`.

**Params**: `engine` (local, dask, spark; empty = `LOCKSTEP_ENGINE`); `source` (the CDNOW export to land
from; empty = the shipped file). Lake root: `LOCKSTEP_LAKE`.
Catch-up is off: backfills are explicit (UI "Backfill" dialog, `airflow backfill create`, REST). Because
of `depends_on_past`, a backfill must reprocess "Missing and Errored Runs" or "All Runs" (Airflow refuses
"Missing Runs" only).
Failures go to the alert notifier (alerts log; e-mail/Slack when configured).
"""


@dag(
    dag_id="features_daily",
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    **o.daily_dag_kwargs(on_failure_callback=AirflowNotifier()),
    params={
        "engine": Param(None, **o.engine_param_schema()),
        "source": Param(
            None,
            type=["null", "string"],
            title="CDNOW export",
            description="Path of the CDNOW export to land from; empty = the shipped file.",
        ),
    },
    doc_md=DOC,
    tags=["lockstep", "features"],
)
def features_daily():
    @task
    def land_raw(ds=None, params=None):
        from jobs.ingest.cdnow import ingest_cdnow

        day = o.partition(ds)
        return o.summary(ingest_cdnow(o.config().lake(), day, day, source=params["source"]))

    @task
    def validate_raw(ds=None):
        from jobs.quality.validate import validate_partition

        with o.data_quality_gate():
            return o.summary(validate_partition(o.config(), o.RAW_EVENTS, o.partition(ds), alert=False))

    @task(depends_on_past=True)
    def build_snapshot(ds=None, params=None):
        from jobs.snapshots import build_snapshot

        return o.summary(build_snapshot(o.config(params["engine"]), o.partition(ds), o.FEATURE_SET))

    @task(outlets=[SNAPSHOTS])
    def validate_snapshot(ds=None):
        from jobs.quality.validate import validate_partition

        day = o.partition(ds)
        with o.data_quality_gate():
            validate_partition(o.config(), "feature_snapshots", day, feature_set=o.FEATURE_SET, alert=False)
        # The Asset event carries the partition, so batch_scoring scores exactly this day.
        yield Metadata(SNAPSHOTS, {"ds": day, "table": o.snapshot_table_name()})

    land_raw() >> validate_raw() >> build_snapshot() >> validate_snapshot()


features_daily()
