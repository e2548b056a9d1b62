"""Models declared as data: the unit that training, scoring, serving and skew work on.

A :class:`Model` (Chronon's Join, Feast's FeatureService) says

* which **queries** it answers: entity snapshots at cut-offs (:class:`EntitySnapshots`:
  every entity known at each cut-off) or the rows of a query source (:class:`QueryRows`:
  e.g. one row per scheduled order, with its ``as_of``);
* its **label**: an event rule over a source (:class:`EventLabel`: "an event of S matching
  a condition within H after the cut-off") or an outcome read from the query's own row
  (:class:`OutcomeLabel`: one outcome per query);
* the **feature sets it joins**, each bound to one of the query's key columns
  (:class:`Join`), so one model joins sets of different entities;
* training parameters and out-of-time ranges, the predictions table, skew and drift
  thresholds and its schedule.

Pure data, checked when constructed and again, across declarations, by
:func:`features.repo.check`.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field

from features.source import DeclarationError, Source
from features.spec import FeatureSet

OPERATORS = (">=", ">", "<=", "<", "==", "!=", "in", "is_null", "not_null")
CUTOFF_EVERY = ("day", "week")


@dataclass(frozen=True)
class Condition:
    """``column op value``; ``is_null``/``not_null`` take no value, ``in`` a tuple."""

    column: str
    op: str
    value: object = None

    def __post_init__(self) -> None:
        if self.op not in OPERATORS:
            raise ValueError(f"condition on {self.column!r}: unknown operator {self.op!r}; expected one of {OPERATORS}")
        if self.op == "in" and not isinstance(self.value, tuple):
            object.__setattr__(self, "value", tuple(self.value))

    def describe(self) -> str:
        return f"{self.column} {self.op}" + ("" if self.op in ("is_null", "not_null") else f" {self.value!r}")


@dataclass(frozen=True)
class EntitySnapshots:
    """Queries: every entity of ``key`` known (an event ingested) before each cut-off.

    Cut-offs are at 00:00 UTC of every day or of every ``weekday`` (0 = Monday).
    """

    source: Source
    key: str | None = None
    every: str = "week"
    weekday: int = 0

    @property
    def key_name(self) -> str:
        return self.key or self.source.key_names[0]


@dataclass(frozen=True)
class QueryRows:
    """Queries: the rows of ``source``, one per query, at ``as_of`` = column ``time`` + ``offset_hours``.

    The query id is the source's event id; every key column of the source can be bound to a
    feature set. The predictions table is keyed by the query id. A query row whose ``as_of`` falls
    on day D lands in the ingest partitions D - ``lead_days`` .. D + 1 (a schedule published a
    week ahead: ``lead_days=8``); batch scoring of day D scores the rows already landed by D.
    """

    source: Source
    time: str
    offset_hours: float = 0.0
    lead_days: int = 1

    @property
    def offset_us(self) -> int:
        return round(self.offset_hours * 3_600_000_000)


@dataclass(frozen=True)
class EventLabel:
    """1 when the query's entity has an event of ``source`` matching every condition of ``where``
    with ``cutoff <= event_ts < cutoff + horizon_days``, else 0. A label is mature once the
    horizon (plus ``grace_days`` for late arrivals) is in the lake."""

    source: Source
    horizon_days: float
    where: tuple[Condition, ...] = ()
    grace_days: int = 0
    description: str = ""


@dataclass(frozen=True)
class OutcomeLabel:
    """1 when the query's outcome matches ANY of ``when`` (e.g. ``dep_delay >= 15`` or cancelled),
    else 0: an outcome per query, known ``maturity_hours`` after the query's time.

    The outcome is the query row itself, or (``source``) the row of another source with the same
    event id (a schedule's queries, the flights' outcomes); a query without an outcome row once the
    label is mature has no label and is left out (the labels manifest counts them).
    """

    when: tuple[Condition, ...]
    maturity_hours: float = 0.0
    source: Source | None = None
    description: str = ""


@dataclass(frozen=True)
class Join:
    """Feature set ``feature_set`` evaluated for the query column ``key`` (default: the set's entity).

    Serving: the set is fetched with its own ``timeout_ms`` (None: the service's store timeout) and
    in its own ``mode`` (``fresh``: the kernel over the entity's recent events; ``materialized``: the
    last snapshot vector; None: the service's default); a set that times out or fails is served
    with its declared defaults and named in the log row, the other sets are not held up.
    """

    feature_set: FeatureSet
    key: str | None = None
    timeout_ms: float | None = None
    mode: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in (None, "fresh", "materialized"):
            raise DeclarationError(
                "join", self.feature_set.name, "mode", f"{self.mode!r}; expected 'fresh', 'materialized' or None"
            )
        if self.timeout_ms is not None and not self.timeout_ms > 0:
            raise DeclarationError("join", self.feature_set.name, "timeout_ms", f"must be > 0, got {self.timeout_ms!r}")

    @property
    def key_name(self) -> str:
        return self.key or self.feature_set.entity


@dataclass(frozen=True)
class Ranges:
    """Out-of-time training ranges, in weeks of cut-offs ending at the training run's date
    (the DAG's defaults), or fixed ``(first_ds, last_ds)`` pairs."""

    train_weeks: int = 21
    valid_weeks: int = 4
    holdback_weeks: int = 4
    train: tuple[str, str] | None = None
    valid: tuple[str, str] | None = None
    holdback: tuple[str, str] | None = None


@dataclass(frozen=True)
class Schedule:
    """Airflow schedules: training (cron or preset), skew (nightly). Scoring is triggered by the
    Assets of the model's feature sets."""

    training: str | None = "@weekly"
    skew: str | None = "@daily"


@dataclass(frozen=True)
class CanaryGuards:
    """What a canary must hold, judged over a sliding window of the canary arm vs the champion arm of
    one service process (``jobs.serving.guards``); a breach stops the canary (every request back to
    the champion), is recorded on the challenger's registry version and alerts.

    * ``window``: the last this-many requests of EACH arm are judged; ``min_requests``: neither arm
      is judged before it has this many in its window.
    * latency: a breach when the canary's p99 is above ``max_p99_ratio`` times the champion's AND more
      than ``max_p99_excess_ms`` above it (both: a ratio alone trips on sub-millisecond noise).
    * ``max_error_excess`` / ``max_degraded_excess``: the canary's error (its model failed; the request
      was answered by the champion) and degraded rates may exceed the champion's by at most this.
    * ``max_score_psi``: PSI of the canary's scores against the champion arm's recent scores.

    ``math.inf`` turns a guard off. The champion's staleness uses the model's
    ``champion_max_age_days`` and ``drift_psi`` (one owner for each threshold).
    """

    window: int = 1000
    min_requests: int = 100
    max_p99_ratio: float = 2.0
    max_p99_excess_ms: float = 25.0
    max_error_excess: float = 0.01
    max_degraded_excess: float = 0.05
    max_score_psi: float = 0.25

    def __post_init__(self) -> None:
        if not (isinstance(self.window, int) and self.window >= 10):
            raise DeclarationError("guards", "canary", "window", f"must be an integer >= 10, got {self.window!r}")
        if not (isinstance(self.min_requests, int) and 1 <= self.min_requests <= self.window):
            raise DeclarationError(
                "guards",
                "canary",
                "min_requests",
                f"needs 1 <= min_requests <= window ({self.window}), got {self.min_requests!r}",
            )
        if not self.max_p99_ratio >= 1:
            raise DeclarationError("guards", "canary", "max_p99_ratio", f"must be >= 1, got {self.max_p99_ratio!r}")
        for name in ("max_p99_excess_ms", "max_error_excess", "max_degraded_excess", "max_score_psi"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value >= 0):
                raise DeclarationError("guards", "canary", name, f"must be a number >= 0, got {value!r}")


#: The default canary ramp (``CanaryRamp.steps``): 1% -> 5% -> 25% -> 100% of the entities.
DEFAULT_CANARY_STEPS = (0.01, 0.05, 0.25, 1.0)


@dataclass(frozen=True)
class CanaryRamp:
    """How a challenger's canary grows (``jobs.serving.canary.advance_canary``): the shares of entities
    it serves, step by step (strictly increasing, each in (0, 1]). A step advances — by
    ``lockstep canary --next`` or by the DAG ``canary_ramp__<model>`` on ``schedule`` (a cron expression
    or preset; ``None``: by command only) — only when no breach is recorded, the current stage has lasted
    ``min_stage_minutes``, and the guards (``CanaryGuards``) judged the canary arm at this share since the
    stage began and found no breach."""

    steps: tuple[float, ...] = DEFAULT_CANARY_STEPS
    min_stage_minutes: float = 60.0
    schedule: str | None = "@hourly"

    def __post_init__(self) -> None:
        if isinstance(self.steps, list):
            object.__setattr__(self, "steps", tuple(self.steps))
        steps = self.steps
        if not (
            isinstance(steps, tuple)
            and steps
            and all(isinstance(s, (int, float)) and not isinstance(s, bool) and 0 < s <= 1 for s in steps)
        ):
            raise DeclarationError("ramp", "canary", "steps", f"must be shares in (0, 1], got {steps!r}")
        if any(b <= a for a, b in zip(steps, steps[1:])):
            raise DeclarationError("ramp", "canary", "steps", f"must be strictly increasing, got {steps!r}")
        m = self.min_stage_minutes
        if not (isinstance(m, (int, float)) and not isinstance(m, bool) and 0 <= m < float("inf")):
            raise DeclarationError("ramp", "canary", "min_stage_minutes", f"must be a number >= 0, got {m!r}")
        if self.schedule is not None and not (isinstance(self.schedule, str) and self.schedule.strip()):
            raise DeclarationError(
                "ramp", "canary", "schedule", f"must be a cron expression, a preset or None, got {self.schedule!r}"
            )

    def next_step(self, share: float) -> float | None:
        """The first step above ``share`` (None: at or past the last step)."""
        return next((s for s in self.steps if s > share), None)


@dataclass(frozen=True)
class Model:
    """What training, scoring, serving and skew work on."""

    name: str
    queries: EntitySnapshots | QueryRows
    label: EventLabel | OutcomeLabel
    joins: tuple[Join, ...]
    params: tuple[tuple[str, object], ...] = ()
    rounds: int = 300
    ranges: Ranges = field(default_factory=Ranges)
    #: The lake table and SQL table of the predictions (default ``predictions/<name>``,
    #: ``predictions_<name>``).
    predictions: str | None = None
    sql_table: str | None = None
    #: Skew thresholds (``jobs.skew``'s keys: logic_skew, mismatch_rate ...).
    skew_thresholds: tuple[tuple[str, float], ...] = ()
    #: Drift of a served feature against the champion's training features (PSI): from
    #: ``drift_psi_moderate`` a warning (report line + warning-level alert), from ``drift_psi`` (major)
    #: a breach (the skew job fails and alerts). ``math.inf`` turns a level off.
    drift_psi: float = 0.25
    drift_psi_moderate: float = 0.1
    #: The skew report notes a champion whose training window ended more than this many days
    #: before the served day.
    champion_max_age_days: float = 30.0
    #: The canary's guards (``CanaryGuards``): a breach rolls the canary back automatically.
    guards: CanaryGuards = field(default_factory=CanaryGuards)
    #: The canary's ramp (``CanaryRamp``): its steps, how long a stage lasts at least, its schedule.
    ramp: CanaryRamp = field(default_factory=CanaryRamp)
    schedule: Schedule = field(default_factory=Schedule)
    description: str = ""
    owner: str = ""

    def __post_init__(self) -> None:
        for name in ("params", "skew_thresholds"):
            value = getattr(self, name)
            if isinstance(value, dict):
                object.__setattr__(self, name, tuple(sorted(value.items())))
        if isinstance(self.joins, Join) or isinstance(self.joins, FeatureSet):
            object.__setattr__(self, "joins", (self.joins,))
        object.__setattr__(self, "joins", tuple(j if isinstance(j, Join) else Join(j) for j in self.joins))
        if not self.joins:
            raise DeclarationError("model", self.name, "joins", "a model joins at least one feature set")
        if not 0 < self.drift_psi_moderate <= self.drift_psi:
            raise DeclarationError(
                "model",
                self.name,
                "drift_psi_moderate",
                f"needs 0 < drift_psi_moderate <= drift_psi, got {self.drift_psi_moderate!r} and {self.drift_psi!r}",
            )
        if not self.champion_max_age_days > 0:
            raise DeclarationError(
                "model", self.name, "champion_max_age_days", f"must be > 0, got {self.champion_max_age_days!r}"
            )
        if not isinstance(self.guards, CanaryGuards):
            raise DeclarationError("model", self.name, "guards", f"must be a CanaryGuards, got {self.guards!r}")
        if not isinstance(self.ramp, CanaryRamp):
            raise DeclarationError("model", self.name, "ramp", f"must be a CanaryRamp, got {self.ramp!r}")
        if isinstance(self.queries, EntitySnapshots) and not isinstance(self.label, EventLabel):
            raise DeclarationError(
                "model", self.name, "label", "entity-snapshot queries need an EventLabel (an outcome needs query rows)"
            )

    # ------------------------------------------------------------------ derived names

    @property
    def feature_sets(self) -> tuple[FeatureSet, ...]:
        return tuple(j.feature_set for j in self.joins)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(n for fs in self.feature_sets for n in fs.feature_names)

    @property
    def query_id(self) -> str:
        """The key of a query row: the snapshot entity, or the query source's event id."""
        if isinstance(self.queries, QueryRows):
            return self.queries.source.event_id
        return self.queries.key_name

    @property
    def query_keys(self) -> tuple[tuple[str, str], ...]:
        """``(column, Arrow type)`` of the query columns the joins bind to, in join order, unique."""
        src = self.queries.source
        out: list[tuple[str, str]] = []
        for j in self.joins:
            col = j.key_name
            if col not in [c for c, _ in out]:
                out.append((col, src.type_of(col)))
        return tuple(out)

    @property
    def id_columns(self) -> tuple[tuple[str, str], ...]:
        """Columns that identify a row of the model's tables: the query id, then the join keys."""
        src = self.queries.source
        cols = [(self.query_id, src.type_of(self.query_id))]
        cols += [c for c in self.query_keys if c[0] != self.query_id]
        return tuple(cols)

    @property
    def id_fields(self) -> tuple[tuple[str, str, bool], ...]:
        """``id_columns`` with nullability: the query id is never null; a join key is nullable when its
        query-source key is (e.g. a flight without a plane)."""
        nullable = {n: nul for n, _, nul in self.queries.source.raw_columns()}
        return tuple((c, t, i > 0 and nullable.get(c, False)) for i, (c, t) in enumerate(self.id_columns))

    @property
    def serving_log_table(self) -> str:
        """The lake table of the model's served requests (one partition per serving day)."""
        return f"serving_logs/{self.name}"

    @property
    def skew_report_table(self) -> str:
        return f"skew_reports/{self.name}"

    @property
    def labels_table(self) -> str:
        return f"labels/{self.name}"

    @property
    def training_table(self) -> str:
        return f"training_sets/{self.name}"

    @property
    def predictions_table(self) -> str:
        return self.predictions or f"predictions/{self.name}"

    @property
    def sql_table_name(self) -> str:
        return self.sql_table or f"predictions_{self.name}"

    @property
    def label_source(self) -> Source:
        return self.label.source or self.queries.source

    def label_reads(self, ds: str) -> dict[str, tuple[str, str]]:
        """``{source name: (first, last) ingest partition}`` the labels of cut-off ``ds`` read beyond
        the history. An event label: its source's ``ds .. ds + ceil(horizon) - 1 + grace``. An outcome
        label: the query source's ``ds - lead_days .. ds + 1 + ceil(maturity / 24 h)`` and, when the
        outcomes come from another source, that source's ``ds - 1 .. ds + 1 + ceil(maturity / 24 h)``.
        The labels of ``ds`` are mature when every range is landed (``jobs.training.labels``)."""
        day = dt.date.fromisoformat(str(ds)[:10])

        def shift(days: int) -> str:
            return (day + dt.timedelta(days=days)).isoformat()

        label = self.label
        if isinstance(label, EventLabel):
            return {self.label_source.name: (shift(0), shift(math.ceil(label.horizon_days) - 1 + label.grace_days))}
        after = 1 + math.ceil(label.maturity_hours / 24.0)
        out = {self.queries.source.name: (shift(-self.queries.lead_days), shift(after))}
        if label.source is not None:
            lo, hi = self.outcome_reads(ds)
            prev = out.get(label.source.name)
            out[label.source.name] = (min(lo, prev[0]), max(hi, prev[1])) if prev else (lo, hi)
        return out

    def outcome_reads(self, ds: str) -> tuple[str, str]:
        """``(first, last)`` ingest partition of an outcome label's ``source`` the labels of ``ds``
        join their outcomes from: ``ds - 1 .. ds + 1 + ceil(maturity / 24 h)``."""
        day = dt.date.fromisoformat(str(ds)[:10])
        after = 1 + math.ceil(self.label.maturity_hours / 24.0)
        return (day - dt.timedelta(days=1)).isoformat(), (day + dt.timedelta(days=after)).isoformat()

    @property
    def sources(self) -> tuple[Source, ...]:
        """Every source the model reads (queries, label, features), each once, in that order."""
        out: list[Source] = []
        for s in (self.queries.source, self.label_source, *(fs.source for fs in self.feature_sets)):
            if s is not None and s.name not in [o.name for o in out]:
                out.append(s)
        return tuple(out)

    @property
    def fingerprint(self) -> str:
        """The feature-set fingerprints the model joins, in join order (what a model version must match)."""
        return "+".join(fs.fingerprint for fs in self.feature_sets)
