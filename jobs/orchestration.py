"""Glue between the Airflow DAGs in ``dags/`` and the jobs: names, Params, Asset URIs, retry policy,
and the small pure functions the DAG tasks use to turn Airflow's context into explicit job arguments.

DAG files import this module at parse time, so it imports only the standard library at module level;
everything heavy (pandas, pyarrow, the jobs themselves) is imported inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

#: Kept equal to ``jobs.config.ENGINES`` (a test checks); repeated here so parsing a DAG stays cheap.
ENGINES = ("local", "dask", "spark")
FEATURE_SET = "customer_activity_v1"

#: The span of the shipped CDNOW log: the DAGs' schedules live inside it so the real data drives them.
CDNOW_START = dt.datetime(1997, 1, 1, tzinfo=dt.UTC)
CDNOW_END = dt.datetime(1998, 6, 30, tzinfo=dt.UTC)

#: Every Lockstep task runs in this pool; its slots cap concurrent tasks (one per core) so a months-long
#: backfill queues instead of stampeding the machine. Created by ``lockstep demo``, the tests and the
#: compose init job (``airflow pools set``).
POOL = "lockstep"
POOL_SLOTS = 2
POOL_DESCRIPTION = "Lockstep jobs: one slot per core, so backfills queue instead of stampeding"

RAW_EVENTS = "raw_events"
PREDICTIONS = "predictions"

# Retries are for infrastructure hiccups (a busy disk, a lost Dask worker); data-quality failures skip
# them (``data_quality_gate`` turns them into AirflowFailException, which Airflow never retries).
RETRIES = 2
RETRY_DELAY = dt.timedelta(seconds=30)
MAX_RETRY_DELAY = dt.timedelta(minutes=10)
EXECUTION_TIMEOUT = dt.timedelta(hours=2)


def snapshot_table_name(feature_set: str = FEATURE_SET) -> str:
    return f"feature_snapshots/{feature_set}"


def asset_uri(table: str) -> str:
    """The Asset URI of a lake table: logical (``lockstep://lake/<table>``), so it does not change
    when the lake moves from a local path to object storage."""
    if not table or table.startswith("/") or ".." in table.split("/"):
        raise ValueError(f"bad table name {table!r}")
    return f"lockstep://lake/{table}"


def daily_dag_kwargs(on_failure_callback: Any = None) -> dict[str, Any]:
    """The ``@dag`` arguments besides ``schedule`` (explicit in each file: ruff's AIR002) of the daily
    DAGs over the CDNOW period (``features_daily``, ``skew_nightly``): no implicit catch-up
    (backfills are explicit), two runs at a time, the shared ``default_args``."""
    return {
        "start_date": CDNOW_START,
        "end_date": CDNOW_END,
        "catchup": False,
        "max_active_runs": 2,
        "default_args": default_args(on_failure_callback),
    }


def default_args(on_failure_callback: Any = None) -> dict[str, Any]:
    """``default_args`` shared by every Lockstep DAG."""
    args: dict[str, Any] = {
        "owner": "lockstep",
        "pool": POOL,
        "retries": RETRIES,
        "retry_delay": RETRY_DELAY,
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": MAX_RETRY_DELAY,
        "execution_timeout": EXECUTION_TIMEOUT,
    }
    if on_failure_callback is not None:
        args["on_failure_callback"] = on_failure_callback
    return args


def engine_param_schema() -> dict[str, Any]:
    """JSON schema of the ``engine`` Param: null means "from the configuration" (LOCKSTEP_ENGINE, else
    local); anything else must be one of ``ENGINES`` — Airflow rejects a bad name when the run is
    triggered, before any task starts."""
    return {
        "type": ["null", "string"],
        "enum": [None, *ENGINES],
        "title": "Engine",
        "description": f"Feature engine: one of {', '.join(ENGINES)}; empty = LOCKSTEP_ENGINE or local.",
    }


def config(engine: str | None = None):
    """The run's ``jobs.config.Config``: LOCKSTEP_* environment, then the run's ``engine`` Param."""
    from jobs.config import Config

    return Config.from_env(engine=engine or None)


def parse_ds(value: Any) -> str:
    """A partition date ``YYYY-MM-DD`` from a date, datetime or ISO string (the day in UTC)."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC)
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    text = str(value).strip()
    if not text:
        raise ValueError("empty partition date")
    try:
        return dt.date.fromisoformat(text[:10]).isoformat()
    except ValueError:
        raise ValueError(f"bad partition date {value!r}: expected YYYY-MM-DD") from None


def partition(ds: Any) -> str:
    """The partition a run of a date-partitioned DAG writes: its logical date, required."""
    if ds is None or ds == "":
        raise ValueError(
            "this DAG is partitioned by logical date: trigger it with a logical date "
            "(or backfill a date range); a run without one has no partition to write"
        )
    return parse_ds(ds)


def day_range(ds_from: Any, ds_to: Any) -> list[str]:
    """Every day of ``ds_from..ds_to`` (dates, datetimes or ISO strings; see :func:`parse_ds`), by
    ``jobs.lake.day_range``."""
    from jobs.lake import day_range as lake_day_range

    start, end = parse_ds(ds_from), parse_ds(ds_to)
    if end < start:
        raise ValueError(f"date range ends ({end}) before it starts ({start})")
    return lake_day_range(start, end)


def partitions_to_score(param_ds: Any, triggering_asset_events: Mapping[Any, Iterable[Any]] | None) -> list[str]:
    """The snapshot partitions a batch-scoring run scores.

    An explicit ``ds`` Param wins (a manual run or a re-run of one day); otherwise every ``ds`` carried
    in the extra of the snapshot Asset events that triggered the run (several are merged when the
    features DAG published faster than scoring ran), sorted and de-duplicated.
    """
    if param_ds:
        return [parse_ds(param_ds)]
    days: set[str] = set()
    for events in (triggering_asset_events or {}).values():
        for event in events:
            extra = getattr(event, "extra", None) or (event.get("extra") if isinstance(event, Mapping) else None) or {}
            if extra.get("ds"):
                days.add(parse_ds(extra["ds"]))
    if not days:
        raise ValueError(
            "no partition to score: pass the 'ds' Param, or trigger the run from a "
            "feature-snapshot Asset event whose extra carries 'ds'"
        )
    return sorted(days)


#: Defaults of the training DAG's window (weeks of Monday cut-offs) and its label horizon.
TRAIN_WEEKS, VALID_WEEKS, HOLDBACK_WEEKS = 8, 3, 3
HORIZON_DAYS = 90  # kept equal to jobs.training.labels.HORIZON_DAYS (a test checks)
BACKENDS = ("streamed", "memory", "dask")  # kept equal to jobs.training.lgbm.BACKENDS


def _monday_on_or_before(day: dt.date) -> dt.date:
    return day - dt.timedelta(days=day.weekday())


def training_window(params: Mapping[str, Any], logical_date: Any = None, latest_mature: Any = None) -> dict[str, Any]:
    """Resolve the training DAG's Params into train / valid / holdback ranges of Monday cut-offs.

    Explicit ``*_from``/``*_to`` Params win. Otherwise the window ends at the last Monday whose labels
    are mature (the whole horizon landed) — no later than ``logical_date - horizon`` for a scheduled run,
    and no later than ``latest_mature`` (what the lake holds) — and goes back ``holdback_weeks``, then
    ``valid_weeks``, an embargo of ``embargo_days`` (training labels must not see the validation period),
    then ``train_weeks``. Returns the six dates, ``embargo_days`` and every cut-off (``cutoffs``).
    """
    embargo = int(params["embargo_days"]) if params.get("embargo_days") is not None else HORIZON_DAYS
    weeks = {
        k: int(params.get(f"{k}_weeks") or d)
        for k, d in (("train", TRAIN_WEEKS), ("valid", VALID_WEEKS), ("holdback", HOLDBACK_WEEKS))
    }
    bounds = []
    if logical_date is not None:
        bounds.append(dt.date.fromisoformat(parse_ds(logical_date)) - dt.timedelta(days=HORIZON_DAYS))
    if latest_mature is not None:
        bounds.append(dt.date.fromisoformat(parse_ds(latest_mature)))

    def given(name: str) -> dt.date | None:
        return dt.date.fromisoformat(parse_ds(params[name])) if params.get(name) else None

    hold_to = given("holdback_to")
    if hold_to is None:
        if not bounds:
            raise ValueError(
                "no mature labels: land raw_events at least 90 days past a Monday first, or pass holdback_to"
            )
        hold_to = _monday_on_or_before(min(bounds))
    hold_from = given("holdback_from") or hold_to - dt.timedelta(weeks=weeks["holdback"] - 1)
    valid_to = given("valid_to") or hold_from - dt.timedelta(weeks=1)
    valid_from = given("valid_from") or valid_to - dt.timedelta(weeks=weeks["valid"] - 1)
    train_to = given("train_to") or _monday_on_or_before(valid_from - dt.timedelta(days=max(embargo, 1)))
    train_from = given("train_from") or train_to - dt.timedelta(weeks=weeks["train"] - 1)
    if not train_from <= train_to < valid_from <= valid_to < hold_from <= hold_to:
        raise ValueError(
            f"bad training window: train {train_from}..{train_to}, valid {valid_from}..{valid_to}, "
            f"holdback {hold_from}..{hold_to}"
        )
    out = {
        "train": [train_from.isoformat(), train_to.isoformat()],
        "valid": [valid_from.isoformat(), valid_to.isoformat()],
        "holdback": [hold_from.isoformat(), hold_to.isoformat()],
        "embargo_days": embargo,
    }
    cutoffs = []
    for a, b in (out["train"], out["valid"], out["holdback"]):
        day = dt.date.fromisoformat(a)
        day += dt.timedelta(days=(-day.weekday()) % 7)
        while day <= dt.date.fromisoformat(b):
            cutoffs.append(day.isoformat())
            day += dt.timedelta(weeks=1)
    out["cutoffs"] = cutoffs
    return out


def summary(result: Any) -> Any:
    """A small, JSON-able XCom value for what a job returned (a Manifest, a list of them, a dict...)."""
    if result is None or isinstance(result, (str, int, float, bool)):
        return result
    if isinstance(result, Mapping):
        return {str(k): summary(v) for k, v in result.items()}
    if isinstance(result, (list, tuple)):
        items = [summary(r) for r in result]
        return items if len(items) <= 20 else {"count": len(items), "first": items[0], "last": items[-1]}
    fields = (
        "dataset",
        "table",
        "ds",
        "rows",
        "success",
        "content_fingerprint",
        "name",
        "version",
        "path",
        "report_path",
    )
    out = {f: getattr(result, f) for f in fields if isinstance(getattr(result, f, None), (str, int, float, bool))}
    return out or repr(result)[:200]


@contextlib.contextmanager
def data_quality_gate() -> Iterator[None]:
    """Fail the task at once, without retries, when a data-quality check fails.

    Re-running a failed suite on the same partition cannot pass, so retrying would only delay the
    alert; ``AirflowFailException`` tells Airflow to skip the retries and the alert fires at once.
    """
    from airflow.sdk.exceptions import AirflowFailException

    from jobs.quality.validate import DataQualityError

    try:
        yield
    except DataQualityError as exc:
        raise AirflowFailException(f"data quality failed: {exc}") from exc


# ---- skew_nightly ------------------------------------------------------------------------------------
SERVING_LOGS = "serving_logs"
SKEW_REPORTS = "skew_reports"
#: Kept equal to ``jobs.serving.app.Settings.wal_dir`` (a test checks): the service's default WAL directory.
DEFAULT_SERVING_WAL_DIR = ".lockstep/serving_wal"
SERVING_WAL_ENV = "LOCKSTEP_SERVING_WAL_DIR"


def serving_wal_dir(param: Any = None, environ: Mapping[str, str] | None = None) -> str:
    """The serving WAL directory the nightly publish reads: the run's ``wal_dir`` Param, else
    ``LOCKSTEP_SERVING_WAL_DIR`` (what the service itself reads), else the service's default."""
    env = os.environ if environ is None else environ
    return str(param or env.get(SERVING_WAL_ENV) or DEFAULT_SERVING_WAL_DIR)


def serving_log_action(ds: str, wal_ids: Iterable[str], published_ids: Iterable[str] | None) -> str:
    """Whether the nightly task (re)publishes ``serving_logs/ds=D`` from the WAL, so that re-runs are idempotent.

    ``wal_ids``: the request ids the WAL holds for day ``ds``; ``published_ids``: those of the published
    partition, ``None`` when there is none. Returns ``"publish"`` (nothing published yet, or the WAL holds
    records the partition lacks: the WAL is the superset, so republishing loses nothing), ``"keep"`` (the
    partition already holds every WAL record: nothing new, the partition and its fingerprint stay), or
    ``"empty"`` (no record anywhere: the service logged no traffic that day). Raises ``ValueError`` when the
    WAL has new records but lacks some the partition holds (segments pruned since): republishing would drop
    logged records, so an operator decides.
    """
    wal = set(wal_ids)
    if published_ids is None:
        return "publish" if wal else "empty"
    published = set(published_ids)
    if wal <= published:
        return "keep"
    if published <= wal:
        return "publish"
    raise ValueError(
        f"serving_logs/ds={ds}: the WAL has {len(wal - published)} record(s) the partition lacks, "
        f"but lacks {len(published - wal)} the partition holds (WAL segments pruned?); "
        "republishing would drop logged records — restore the segments or delete the partition"
    )


@contextlib.contextmanager
def skew_gate() -> Iterator[None]:
    """Like :func:`data_quality_gate` for the skew job: a crossed skew threshold fails the task at once,
    without retries (recomputing the same day gives the same breach)."""
    from airflow.sdk.exceptions import AirflowFailException

    from jobs.skew.job import SkewThresholdError

    try:
        yield
    except SkewThresholdError as exc:
        raise AirflowFailException(f"skew over threshold: {exc}") from exc
