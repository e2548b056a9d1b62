"""Glue between the Airflow DAGs in ``dags/`` and the jobs: DAG ids, Asset URIs, Params, schedules and
dates derived from the declarations (``features.repo``), the retry policy, and the small functions the DAG
tasks use to turn Airflow's context into explicit job arguments.

Nothing here names a source, feature set or model: every DAG is generated from a declaration
(``features_daily__<source>``, ``training__<model>``, ``batch_scoring__<model>``, ``skew_nightly__<model>``).

DAG files import this module at parse time, so it imports only the standard library at module level (and
``features.repo``, pure dataclasses, inside :func:`repo`); everything heavy (pandas, pyarrow, the jobs
themselves) is imported inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from features.model import Model
    from features.repo import Repo
    from features.source import Source

#: Kept equal to ``jobs.config.ENGINES`` (a test checks); repeated here so parsing a DAG stays cheap.
ENGINES = ("local", "dask", "spark")

#: Start date of a DAG whose source declares no ``span`` (catch-up is off, so only the latest interval runs).
DEFAULT_START = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)

#: Every Lockstep task runs in this pool; its slots cap concurrent tasks (one per core) so a months-long
#: backfill queues instead of stampeding the machine. Created by ``lockstep demo``, the tests and the
#: compose init job (``airflow pools set``).
POOL = "lockstep"
POOL_SLOTS = 2
POOL_DESCRIPTION = "Lockstep jobs: one slot per core, so backfills queue instead of stampeding"

#: Dataset names of ``jobs.quality.validate.validate_partition`` (the suite is derived from the declaration).
RAW_EVENTS = "raw_events"
FEATURE_SNAPSHOTS = "feature_snapshots"
TRAINING_SETS = "training_sets"
PREDICTIONS = "predictions"

# Retries are for infrastructure hiccups (a busy disk, a lost Dask worker); data-quality failures skip
# them (``data_quality_gate`` turns them into AirflowFailException, which Airflow never retries).
RETRIES = 2
RETRY_DELAY = dt.timedelta(seconds=30)
MAX_RETRY_DELAY = dt.timedelta(minutes=10)
EXECUTION_TIMEOUT = dt.timedelta(hours=2)

BACKENDS = ("streamed", "memory", "dask")  # kept equal to jobs.training.lgbm.BACKENDS (a test checks)


# ---- the declarations ----------------------------------------------------------------------------------
def repo(package: str | None = None) -> Repo:
    """The checked repo of declarations the DAGs are generated from (``$LOCKSTEP_REPO``, else
    ``features.projects``): pure dataclasses, cheap enough to load at DAG parse time."""
    from features.repo import load

    return load(package)


def features_dag_id(source: str) -> str:
    return f"features_daily__{source}"


def training_dag_id(model: str) -> str:
    return f"training__{model}"


def scoring_dag_id(model: str) -> str:
    return f"batch_scoring__{model}"


def skew_dag_id(model: str) -> str:
    return f"skew_nightly__{model}"


def canary_dag_id(model: str) -> str:
    return f"canary_ramp__{model}"


def dag_ids(r: Repo) -> dict[str, list[str]]:
    """Every DAG the declarations produce, by the declaration (``source:<name>`` / ``model:<name>``)."""
    out: dict[str, list[str]] = {}
    for name in sorted(r.sources):
        out[f"source:{name}"] = [features_dag_id(name)]
    for name in sorted(r.models):
        out[f"model:{name}"] = [training_dag_id(name), scoring_dag_id(name), skew_dag_id(name), canary_dag_id(name)]
    return out


def snapshot_table_name(feature_set: str) -> str:
    return f"feature_snapshots/{feature_set}"


def asset_uri(table: str) -> str:
    """The Asset URI of a lake table: logical (``lockstep://<table>``), so it does not change when the
    lake moves from a local path to object storage. A one-segment table (``predictions``) ends in ``/``,
    as Airflow normalises it (the table is the URI's authority)."""
    if not table or table.startswith("/") or ".." in table.split("/") or "://" in table:
        raise ValueError(f"bad table name {table!r}")
    return f"lockstep://{table}" if "/" in table.strip("/") else f"lockstep://{table.strip('/')}/"


def _day(value: str) -> dt.datetime:
    return dt.datetime.combine(dt.date.fromisoformat(value), dt.time(), tzinfo=dt.UTC)


def span_dates(source: Source | None) -> tuple[dt.datetime, dt.datetime | None]:
    """``(start_date, end_date)`` of the DAGs over ``source``: its declared ``span`` (the data's first and
    last day), else :data:`DEFAULT_START` and no end."""
    span = getattr(source, "span", None)
    if not span:
        return DEFAULT_START, None
    return _day(span[0]), _day(span[1])


def model_source(model: Model) -> Source:
    """The source whose days a model's daily DAGs follow: its queries' source."""
    return model.queries.source


def daily_dag_kwargs(source: Source | None, on_failure_callback: Any = None) -> dict[str, Any]:
    """The ``@dag`` arguments besides ``schedule`` (explicit in each file: ruff's AIR002) of the daily
    DAGs over a source's days (``features_daily__*``, ``skew_nightly__*``): the source's span as start and
    end dates, no implicit catch-up (backfills are explicit), two runs at a time, the shared ``default_args``."""
    start, end = span_dates(source)
    return {
        "start_date": start,
        "end_date": end,
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


# ---- a model's cut-offs, label horizon and schedules ------------------------------------------------------
def cadence(model: Model) -> tuple[str, int]:
    """How a model's cut-offs (labels / training-set partitions) step: ``("week", weekday)`` for weekly
    entity snapshots, ``("day", 0)`` for daily ones and for query rows (a partition per day)."""
    q = model.queries
    every = getattr(q, "every", "day")
    return (every, int(getattr(q, "weekday", 0))) if every == "week" else ("day", 0)


def label_horizon_days(model: Model) -> float:
    """Days after a cut-off until the model's labels are known: an event label's horizon, an outcome's
    maturity (hours) in days."""
    label = model.label
    if hasattr(label, "horizon_days"):
        return float(label.horizon_days)
    return float(getattr(label, "maturity_hours", 0.0)) / 24.0


def embargo_days(model: Model) -> int:
    """The default gap between the train and the valid range: the label horizon, in whole days, so
    training labels never see the validation period."""
    return math.ceil(label_horizon_days(model))


def cron_of(schedule: str | None, model: Model | None = None) -> str | None:
    """A declared schedule as a cron expression. ``@weekly`` runs at 00:00 UTC of the model's cut-off
    weekday (a weekly model trains on the day its newest cut-off is taken); other presets and cron
    expressions pass through; ``None`` = no schedule (manual runs only)."""
    if schedule is None:
        return None
    if schedule == "@weekly" and model is not None:
        every, weekday = cadence(model)
        if every == "week":
            return f"0 0 * * {(weekday + 1) % 7}"  # cron: 0 = Sunday; declarations: 0 = Monday
    return schedule


def training_param_defaults(model: Model) -> dict[str, Any]:
    """Defaults of the training DAG's Params, from the declaration: the window (``model.ranges``: weeks
    of cut-offs, or fixed ranges), the embargo (the label horizon) and the boosting rounds."""
    r = model.ranges
    out: dict[str, Any] = {
        "train_weeks": r.train_weeks,
        "valid_weeks": r.valid_weeks,
        "holdback_weeks": r.holdback_weeks,
        "embargo_days": embargo_days(model),
        "rounds": model.rounds,
    }
    for role in ("train", "valid", "holdback"):
        rng = getattr(r, role)
        out[f"{role}_from"], out[f"{role}_to"] = (rng[0], rng[1]) if rng else (None, None)
    return out


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


def event_days(events_by_asset: Mapping[Any, Iterable[Any]] | None) -> set[str]:
    """Every ``ds`` carried in the ``extra`` of the Asset events (objects with ``.extra`` or mappings)."""
    days: set[str] = set()
    for events in (events_by_asset or {}).values():
        for event in events:
            extra = getattr(event, "extra", None) or (event.get("extra") if isinstance(event, Mapping) else None) or {}
            if extra.get("ds"):
                days.add(parse_ds(extra["ds"]))
    return days


def partitions_to_score(
    param_ds: Any,
    triggering_asset_events: Mapping[Any, Iterable[Any]] | None,
    announced: Mapping[Any, Iterable[Any]] | None = None,
    states: Any = None,
) -> list[str]:
    """The snapshot partitions a batch-scoring run scores.

    An explicit ``ds`` Param wins (a manual run or a re-run of one day). Otherwise the days named in the
    ``extra`` of the Asset events — those that triggered the run and, when given, ``announced``: every
    event of the model's snapshot Assets (``inlet_events``) — sorted and de-duplicated; with ``states``
    (``days -> {day: state}``, :func:`scoring_states`) only the days ``due``: the catch-up that makes a
    run score what an Asset event Airflow did not hand to any run announced (see :func:`scoring_states`).
    """
    if param_ds:
        return [parse_ds(param_ds)]
    days = event_days(triggering_asset_events) | event_days(announced)
    if not days:
        raise ValueError(
            "no partition to score: pass the 'ds' Param, or trigger the run from a "
            "feature-snapshot Asset event whose extra carries 'ds'"
        )
    if states is None:
        return sorted(days)
    found = states(sorted(days))
    return [d for d in sorted(days) if found[d] == DUE]


#: :func:`scoring_states`: the day's snapshots are validated and it has no validated predictions built
#: from them (nor a failed attempt on them): a run scores it.
DUE = "due"
#: ... a validated predictions partition built from the current inputs exists: nothing to do.
SCORED = "scored"
#: ... its predictions built from the current inputs failed validation (quarantined): not retried by
#: itself (the same data fails again); a run with the ``ds`` Param scores it again.
FAILED = "failed"
#: ... a snapshot of one of the model's sets is missing or not validated yet: its own event will come.
WAITING = "waiting"


def scoring_states(
    cfg, model: Model, days: Iterable[Any], announced: Mapping[str, Iterable[Any]] | None = None
) -> dict[str, str]:
    """``{day: DUE | SCORED | FAILED | WAITING}`` of ``model``'s batch scoring, from the lake (and the
    snapshot Asset events ``announced``: ``{snapshot table: events}``, each with ``extra.ds`` and
    ``timestamp``).

    Why: Airflow 3.3 queues one ``asset_dag_run_queue`` row per (Asset, DAG), keeps the ``created_at`` of
    the first event queued, and the run it creates consumes only the events up to that instant but
    deletes the row: events that landed in between (several snapshot days while a scoring run was
    running, ``max_active_runs=1``) are consumed by no run until another event comes, and the last ones
    of a backfill never are (README, "Batch scoring catches up"). So a run scores every announced day
    that is due, not only the events handed to it.

    A set's snapshot of the day is ready when it is validated — or, built from unvalidated input (the
    ``unvalidated_inputs`` override: such a partition is never marked validated), when an event announced
    it after it was published (its ``validate_snapshot`` passed). ``WAITING``: a set's snapshot is not
    ready. ``SCORED``: its predictions partition was built from the current inputs (every input its
    manifest records — the snapshot partitions, or the query source's raw range — still has the
    fingerprint it was built from) and is validated (or, built from unvalidated input, published).
    ``FAILED``: a quarantined version of it was built from the current inputs. Else ``DUE``.
    """
    from jobs.lake import MANIFEST, UNVALIDATED_INPUTS, LakeError, Manifest

    lake = cfg.lake()
    snapshots = [lake.table(snapshot_table_name(fs.name)) for fs in model.feature_sets]
    preds = lake.table(model.predictions_table)
    seen = _announcements(announced)

    def ready(table, day: str) -> bool:
        if table.validated(day):
            return True
        try:
            m = table.manifest(day)
        except LakeError:
            return False
        if not m.producer.get(UNVALIDATED_INPUTS):
            return False  # not validated yet (or failed): its own event comes once it is
        try:
            published = dt.datetime.fromisoformat(m.created_at)
        except ValueError:  # a manifest without its publication time: only validation can tell
            return False
        return any(when >= published for when in seen.get((table.name, day), ()))

    def good(day: str) -> Manifest | None:
        if preds.validated(day):
            return preds.manifest(day)
        with contextlib.suppress(LakeError):
            m = preds.manifest(day)
            if m.producer.get(UNVALIDATED_INPUTS) and preds.pending(day) is None:
                return m
        return None

    out: dict[str, str] = {}
    built: dict[str, tuple[Manifest | None, list[Manifest]]] = {}  # day -> (good version, failed ones)
    for day in map(parse_ds, days):
        if not all(ready(t, day) for t in snapshots):
            out[day] = WAITING
            continue
        failed = []
        for url in preds.quarantined(day):
            try:
                failed.append(Manifest.from_json(preds.fs.cat_file(f"{url}/{MANIFEST}")))
            except (FileNotFoundError, LakeError):
                continue
        built[day] = (good(day), failed)
    current = _InputFingerprints(lake)
    current.prefetch(k for g, bad in built.values() for m in [g, *bad] if m is not None for k in m.inputs)
    for day, (g, bad) in built.items():
        if g is not None and current.unchanged(g.inputs):
            out[day] = SCORED
        elif any(current.unchanged(m.inputs) for m in bad):
            out[day] = FAILED
        else:
            out[day] = DUE
    return out


def _announcements(announced: Mapping[str, Iterable[Any]] | None) -> dict[tuple[str, str], list[dt.datetime]]:
    """``{(table, ds): [event times]}`` of events with ``extra.ds`` and a ``timestamp`` (datetime or ISO)."""
    out: dict[tuple[str, str], list[dt.datetime]] = {}
    for table, events in (announced or {}).items():
        for event in events:
            get = event.get if isinstance(event, Mapping) else lambda k, e=event: getattr(e, k, None)
            extra, when = get("extra") or {}, get("timestamp")
            if not extra.get("ds") or when is None:
                continue
            when = dt.datetime.fromisoformat(when.replace("Z", "+00:00")) if isinstance(when, str) else when
            out.setdefault((table, parse_ds(extra["ds"])), []).append(when)
    return out


class _InputFingerprints:
    """The current fingerprint of manifest input keys (``table/ds=D`` or ``table/ds=A..B``), cached."""

    def __init__(self, lake):
        self.lake, self.cache = lake, {}

    def unchanged(self, inputs: Mapping[str, str]) -> bool:
        return all(self.get(key) == fingerprint for key, fingerprint in inputs.items())

    def get(self, key: str) -> str | None:
        if key not in self.cache:
            self.prefetch([key])
        return self.cache[key]

    def prefetch(self, keys: Iterable[str]) -> None:
        """Compute the keys not cached yet; the ranges of one table and first day in one pass."""
        from jobs.lake import LakeError, inputs_fingerprints, parse_input_key

        ranges: dict[tuple[str, str], dict[str, str]] = {}  # (table, first day) -> {last day: key}
        for key in set(keys) - set(self.cache):
            parsed = parse_input_key(key)
            self.cache[key] = None  # an unreadable key, or (below) an input missing or corrupt now
            if parsed is None:
                continue
            name, lo, hi = parsed
            if ".." in key.rpartition("/ds=")[2]:
                ranges.setdefault((name, lo), {})[hi] = key
                continue
            with contextlib.suppress(LakeError):
                self.cache[key] = self.lake.table(name).manifest(lo).content_fingerprint
        for (name, lo), ends in ranges.items():
            with contextlib.suppress(LakeError):
                for hi, fingerprint in inputs_fingerprints(self.lake.table(name), lo, ends).items():
                    self.cache[ends[hi]] = fingerprint


def cutoff_on_or_before(day: dt.date, every: str = "week", weekday: int = 0) -> dt.date:
    """The last cut-off on or before ``day``: ``day`` itself for daily cut-offs, else the last ``weekday``."""
    return day if every == "day" else day - dt.timedelta(days=(day.weekday() - weekday) % 7)


def cutoffs_between(ds_from: Any, ds_to: Any, every: str = "week", weekday: int = 0) -> list[str]:
    """The cut-offs of ``ds_from..ds_to`` (inclusive): every day, or every ``weekday``."""
    day, last = dt.date.fromisoformat(parse_ds(ds_from)), dt.date.fromisoformat(parse_ds(ds_to))
    step = dt.timedelta(days=1 if every == "day" else 7)
    if every != "day":
        day += dt.timedelta(days=(weekday - day.weekday()) % 7)
    out = []
    while day <= last:
        out.append(day.isoformat())
        day += step
    return out


def training_window(
    model: Model, params: Mapping[str, Any], logical_date: Any = None, latest_mature: Any = None
) -> dict[str, Any]:
    """Resolve a training DAG's Params into train / valid / holdback ranges of the model's cut-offs.

    Explicit ``*_from``/``*_to`` Params win (their defaults are the model's fixed ``ranges``). Otherwise the
    window ends at the last cut-off whose labels are mature (the whole label horizon landed) — no later than
    ``logical_date - horizon`` for a scheduled run, and no later than ``latest_mature`` (what the lake holds)
    — and goes back ``holdback_weeks``, then ``valid_weeks``, an embargo of ``embargo_days`` (training labels
    must not see the validation period), then ``train_weeks`` (the weeks default to ``model.ranges``).
    Returns the six dates, ``embargo_days`` and every cut-off (``cutoffs``).
    """
    defaults = training_param_defaults(model)
    every, weekday = cadence(model)
    horizon = label_horizon_days(model)

    def param(name: str) -> Any:
        value = params.get(name)
        return defaults[name] if value is None or value == "" else value

    embargo = int(param("embargo_days"))
    weeks = {k: int(param(f"{k}_weeks")) for k in ("train", "valid", "holdback")}
    bounds = []
    if logical_date is not None:
        bounds.append(dt.date.fromisoformat(parse_ds(logical_date)) - dt.timedelta(days=math.ceil(horizon)))
    if latest_mature is not None:
        bounds.append(dt.date.fromisoformat(parse_ds(latest_mature)))

    def given(name: str) -> dt.date | None:
        value = param(name)
        return dt.date.fromisoformat(parse_ds(value)) if value else None

    def on_or_before(day: dt.date) -> dt.date:
        return cutoff_on_or_before(day, every, weekday)

    step = dt.timedelta(days=1 if every == "day" else 7)
    hold_to = given("holdback_to")
    if hold_to is None:
        if not bounds:
            raise ValueError(
                f"no mature labels of model {model.name!r}: land its sources at least {horizon:g} days past "
                "a cut-off first, or pass holdback_to"
            )
        hold_to = on_or_before(min(bounds))
    hold_from = given("holdback_from") or on_or_before(hold_to - dt.timedelta(weeks=weeks["holdback"]) + step)
    valid_to = given("valid_to") or hold_from - step
    valid_from = given("valid_from") or on_or_before(valid_to - dt.timedelta(weeks=weeks["valid"]) + step)
    train_to = given("train_to") or on_or_before(valid_from - dt.timedelta(days=max(embargo, 1)))
    train_from = given("train_from") or on_or_before(train_to - dt.timedelta(weeks=weeks["train"]) + step)
    if not train_from <= train_to < valid_from <= valid_to < hold_from <= hold_to:
        raise ValueError(
            f"bad training window of model {model.name!r}: train {train_from}..{train_to}, "
            f"valid {valid_from}..{valid_to}, holdback {hold_from}..{hold_to}"
        )
    out: dict[str, Any] = {
        "train": [train_from.isoformat(), train_to.isoformat()],
        "valid": [valid_from.isoformat(), valid_to.isoformat()],
        "holdback": [hold_from.isoformat(), hold_to.isoformat()],
        "embargo_days": embargo,
    }
    out["cutoffs"] = [c for role in ("train", "valid", "holdback") for c in cutoffs_between(*out[role], every, weekday)]
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
    """Fail the task at once, without retries, when a data-quality check fails or an input partition
    is not validated.

    Re-running a failed suite on the same partition cannot pass, and an input that was not validated
    upstream stays so, so retrying would only delay the alert; ``AirflowFailException`` tells Airflow
    to skip the retries and the alert fires at once.
    """
    from airflow.sdk.exceptions import AirflowFailException

    from jobs.lake import UnvalidatedPartitionError
    from jobs.quality.validate import DataQualityError

    try:
        yield
    except DataQualityError as exc:
        raise AirflowFailException(f"data quality failed: {exc}") from exc
    except UnvalidatedPartitionError as exc:
        raise AirflowFailException(f"unvalidated input: {exc}") from exc


# ---- features_daily ----------------------------------------------------------------------------------
def land_day(cfg, source: str, day: str, path: str | None = None):
    """Land day ``day`` of the declared ``source`` (``jobs.ingest.landing.land``); ``path`` (the DAG's Param)
    lands from another input than the declared one, e.g. a re-export."""
    from jobs.ingest.landing import land

    return land(cfg, source, day, day, **({"path": path} if path else {}))


# ---- skew_nightly ------------------------------------------------------------------------------------
#: The dataset of the serving-log suite; a model's table is ``model.serving_log_table`` (``serving_logs/<model>``).
SERVING_LOGS = "serving_logs"
#: The prefix of every model's ``model.skew_report_table`` (``skew_reports/<model>``), the reports' Asset.
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


def publish_serving_log(cfg, model: str, day: str, wal_param: Any = None) -> dict[str, Any]:
    """The nightly publish of ``<model.serving_log_table>/ds=<day>`` from the model's serving WAL
    (``<wal root>/<model>``, ``jobs.serving.log.model_wal_dir``), idempotent
    (:func:`serving_log_action`): skipped when no request was logged that day, failed at once when there is
    neither a WAL nor a published partition (a misconfigured WAL directory)."""
    from pathlib import Path

    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from jobs.serving.log import model_wal_dir, publish, read_wal

    decl = cfg.repo().model(model)
    wal_dir = str(model_wal_dir(serving_wal_dir(wal_param), decl))
    table = cfg.lake().table(decl.serving_log_table)
    published = table.read(day, columns=["request_id"])["request_id"] if table.exists(day) else None
    if published is None and not Path(wal_dir).is_dir():
        raise AirflowFailException(
            f"no serving WAL at {wal_dir!r} and no {decl.serving_log_table}/ds={day}: "
            f"set {SERVING_WAL_ENV} (absolute) or the wal_dir Param"
        )
    wal = read_wal(wal_dir, decl) if Path(wal_dir).is_dir() else None
    wal_ids = [] if wal is None else wal.loc[wal["request_time"].dt.strftime("%Y-%m-%d") == day, "request_id"]
    action = serving_log_action(day, wal_ids, published)
    if action == "empty":
        raise AirflowSkipException(f"the service logged no request on {day} (WAL {wal_dir})")
    manifest = publish(cfg, wal_dir, decl, day) if action == "publish" else table.manifest(day)
    return {"action": action, **summary(manifest)}


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
