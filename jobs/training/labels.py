"""Labels of a model -> ``model.labels_table`` (``labels/<model>/ds=<D>``), from its declaration.

Rows: the model's id columns (``model.id_columns``), ``as_of``, ``label`` (int8).

**Entity snapshots + event label** (:class:`features.model.EntitySnapshots`,
:class:`features.model.EventLabel`), for a cut-off date ``C`` (the instant ``C 00:00 UTC``):

* population: every entity of ``queries.key_name`` *known* at ``C``, i.e. with at least one
  event of the query source whose ``ingested_at < C`` — exactly the entities a service running
  at ``C`` could score;
* label: 1 when the entity has an event of ``label.source`` matching every condition of
  ``label.where`` with ``C <= event_ts < C + horizon_days``, else 0;
* ``as_of = C``: the training set computes the row's features point in time at ``C``, so
  nothing at or after the cut-off can reach a feature; only the label looks forward.

A label is *mature* once its whole horizon is in the lake: the label-window events are looked
up in the ingest partitions ``C .. C + ceil(horizon) - 1 + grace_days`` of ``label.source``; a
cut-off whose partitions are not all published fails loudly (``MissingPartitionError`` naming
the days) instead of giving silently smaller labels. An event that arrives later than
``grace_days`` after its horizon is not counted. Cut-offs are every day, or every
``queries.weekday`` (``cutoffs_in``), so every run and backfill agrees on the same dates.

**Query rows + outcome label** (:class:`features.model.QueryRows`,
:class:`features.model.OutcomeLabel`): partition ``ds=D`` holds the rows of the query source
whose ``as_of = row[queries.time] + offset_hours`` falls on day ``D`` (UTC); label 1 when the
row matches ANY condition of ``label.when``. The rows are read from the query source's ingest
partitions ``D - 1 .. D + 1 + ceil(maturity_hours / 24)`` (clipped below at the source's first
partition): a row is expected to land at most a day before its ``as_of`` day and with its
outcome within the maturity after it; a row ingested outside that window is not a query of
``D``. A missing partition in the window is a loud ``MissingPartitionError``. A query id seen
twice keeps its latest-ingested row (a re-landed row with its outcome).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa

from features.model import Condition, EntitySnapshots, EventLabel, Model, OutcomeLabel, QueryRows
from jobs.config import Config
from jobs.lake import (
    UNVALIDATED_INPUTS,
    Lake,
    Manifest,
    MissingPartitionError,
    Table,
    UnvalidatedPartitionError,
    day_range,
    inputs_fingerprint,
    unvalidated_inputs,
)
from jobs.schemas import UTC_US

LABEL = "label"
LABEL_TYPE = "int8"


def resolve_model(cfg: Config, model: str | Model) -> Model:
    """The declaration of ``model`` (a name in ``cfg.repo()``, or a declaration itself)."""
    return model if isinstance(model, Model) else cfg.repo().model(model)


def label_definition(model: Model) -> str:
    """The label rule in words (recorded with every labels partition and trained model)."""
    label, q = model.label, model.queries
    if isinstance(label, EventLabel):
        where = " and ".join(c.describe() for c in label.where)
        return (
            f"label = 1 if the {q.key_name} has an event of {label.source.name}"
            f"{' with ' + where if where else ''} with cutoff <= event_ts < cutoff + {label.horizon_days:g} days, "
            f"else 0; population: {q.key_name}s with an event of {q.source.name} ingested before the cutoff; "
            "features as_of = cutoff"
        )
    when = " or ".join(c.describe() for c in label.when)
    return (
        f"label = 1 if the {q.source.name} row has {when}, else 0; queries: rows of {q.source.name} at "
        f"as_of = {q.time} {q.offset_hours:+g}h, partition = the as_of day"
    )


def labels_schema(model: Model) -> pa.Schema:
    """``model.labels_table``'s schema: id columns, ``as_of``, ``label`` (int8)."""
    fields = [pa.field(c, pa.type_for_alias(t), nullable=nullable) for c, t, nullable in model.id_fields]
    fields += [pa.field("as_of", UTC_US, nullable=False), pa.field(LABEL, pa.int8(), nullable=False)]
    return pa.schema(fields)


def labels_table(lake: Lake, model: Model) -> Table:
    return lake.table(model.labels_table, labels_schema(model))


def cutoff_time(ds: str | dt.date) -> pd.Timestamp:
    """The cut-off instant of labels partition ``ds``: ``ds 00:00 UTC``."""
    return pd.Timestamp(str(ds), tz="UTC")


def weekly_cutoffs(ds_from: str | dt.date, ds_to: str | dt.date, weekday: int = 0) -> list[str]:
    """The days of ``weekday`` (0 = Monday) in ``[ds_from, ds_to]`` (YYYY-MM-DD)."""
    start, end = pd.Timestamp(str(ds_from)), pd.Timestamp(str(ds_to))
    if end < start:
        raise ValueError(f"empty cut-off range {start.date()}..{end.date()}")
    return [d for d in day_range(start.date(), end.date()) if dt.date.fromisoformat(d).weekday() == weekday]


def cutoffs_in(model: Model, ds_from: str | dt.date, ds_to: str | dt.date) -> list[str]:
    """The labels partitions of ``model`` in ``[ds_from, ds_to]``: its weekly cut-offs (entity
    snapshots every ``weekday``), else every day."""
    q = model.queries
    if isinstance(q, EntitySnapshots) and q.every == "week":
        return weekly_cutoffs(ds_from, ds_to, q.weekday)
    start, end = pd.Timestamp(str(ds_from)), pd.Timestamp(str(ds_to))
    if end < start:
        raise ValueError(f"empty cut-off range {start.date()}..{end.date()}")
    return day_range(start.date(), end.date())


def horizon_days(model: Model) -> float:
    """How far a label looks past its ``as_of``: the event horizon, or the outcome's maturity."""
    label = model.label
    return label.horizon_days if isinstance(label, EventLabel) else label.maturity_hours / 24.0


def embargo_days(model: Model) -> int:
    """The default gap between training and validation cut-offs: the label horizon, in whole days."""
    return math.ceil(horizon_days(model))


def label_inputs(model: Model, ds: str) -> tuple[str, str]:
    """``(first, last)`` ingest partitions of the label (or query) source that labels ``ds`` read
    beyond the history (module docstring; :meth:`features.model.Model.label_reads`)."""
    src = model.label_source if isinstance(model.label, EventLabel) else model.queries.source
    return model.label_reads(ds)[src.name]


def outcome_inputs(model: Model, ds: str) -> tuple[str, str]:
    """``(first, last)`` ingest partitions of an OutcomeLabel's own ``source`` that labels ``ds`` read:
    the day before ``ds`` through the label's maturity (:meth:`features.model.Model.outcome_reads`)."""
    return model.outcome_reads(ds)


def horizon_end_ds(model: Model, ds: str) -> str:
    """The last ingest partition a label of ``ds`` reads."""
    return label_inputs(model, ds)[1]


def latest_mature_cutoff(cfg: Config, model: str | Model) -> str | None:
    """The last labels partition whose every input is in the lake (None if there is none).

    An event label reads its source's partitions ``C .. C + horizon + grace``; an outcome label reads
    the query source's ``C - lead .. C + 1 + maturity`` (:func:`label_inputs`) and, when the outcomes
    come from another source, that source's ``C - 1 .. C + 1 + maturity`` (:func:`outcome_inputs`):
    each must end on or before the last partition of the table it reads (a timetable published a week
    ahead ends a week before the flights it lists, so the flights bound the cut-off, not the timetable).
    """
    m = resolve_model(cfg, model)
    lake = cfg.lake()
    raw = lake.table(m.label_source.table if isinstance(m.label, EventLabel) else m.queries.source.table)
    last, first = raw.last_ds(), raw.first_ds()
    if last is None:
        return None
    bounds = [(last, lambda ds: label_inputs(m, ds)[1])]
    if isinstance(m.label, OutcomeLabel) and m.label.source is not None:
        out_last = lake.table(m.label.source.table).last_ds()
        if out_last is None:
            return None
        bounds.append((out_last, lambda ds: outcome_inputs(m, ds)[1]))
    c = pd.Timestamp(min(b for b, _ in bounds))
    while any(reads(c.strftime("%Y-%m-%d")) > bound for bound, reads in bounds):
        c -= pd.Timedelta(days=1)
    q = m.queries
    if isinstance(q, EntitySnapshots):
        if q.every == "week":
            c -= pd.Timedelta(days=(c.weekday() - q.weekday) % 7)
        return c.strftime("%Y-%m-%d") if c.strftime("%Y-%m-%d") > first else None
    return c.strftime("%Y-%m-%d") if c.strftime("%Y-%m-%d") >= first else None


def build_labels(
    cfg: Config, model: str | Model, cutoffs: Iterable[str], *, allow_unvalidated: bool = False
) -> list[Manifest]:
    """Compute and publish ``labels/<model>/ds=C`` for each cut-off ``C`` (replacing any previous version).

    The raw days a cut-off reads must be validated: otherwise ``UnvalidatedPartitionError`` (naming the
    table, the days and the override) before that cut-off is published, unless ``allow_unvalidated=True``
    (exploration; ``producer.unvalidated_inputs`` then names them, and a training set built from the
    labels is refused the same way). No suite validates the labels table itself."""
    m = resolve_model(cfg, model)
    cutoffs = sorted({str(pd.Timestamp(str(c)).date()) for c in cutoffs})
    if not cutoffs:
        return []
    if isinstance(m.queries, EntitySnapshots):
        return _snapshot_labels(cfg, m, cutoffs, allow_unvalidated)
    return _outcome_labels(cfg, m, cutoffs, allow_unvalidated)


def _gated(lake: Lake, inputs: dict, producer: dict, allow_unvalidated: bool) -> dict:
    """``producer``, naming the unvalidated input days; UnvalidatedPartitionError for them unless allowed."""
    unvalidated = unvalidated_inputs(lake, inputs)
    if unvalidated and not allow_unvalidated:
        table = unvalidated[0].rpartition("/ds=")[0]
        days = sorted({u.rpartition("/ds=")[2] for u in unvalidated if u.rpartition("/ds=")[0] == table})
        raise UnvalidatedPartitionError(table, days, "raw_events")
    if unvalidated:
        producer[UNVALIDATED_INPUTS] = unvalidated
    return producer


# ---------------------------------------------------------------------------- entity snapshots


def _snapshot_labels(cfg: Config, m: Model, cutoffs: list[str], allow_unvalidated: bool) -> list[Manifest]:
    """Memory is per entity, not per event: one streamed pass collects each entity's first
    ingestion time, then each cut-off streams only its label-window partitions."""
    label: EventLabel = m.label
    if label.horizon_days <= 0 or label.grace_days < 0:
        raise ValueError("horizon_days must be > 0 and grace_days >= 0")
    lake = cfg.lake()
    q = m.queries
    key = q.key_name
    hist = lake.table(q.source.table)
    first = hist.first_ds()
    if first is None or first >= cutoffs[0]:
        raise ValueError(
            f"no {hist.name} partitions before the first cut-off {cutoffs[0]} in {lake.root}; run the ingest first"
        )
    first_known = _first_known(hist, key, q.source.ingested_at, first, _shift(cutoffs[-1], -1))
    events = lake.table(label.source.table)
    key_type = q.source.type_of(key)
    table = labels_table(lake, m)
    manifests = []
    for c in cutoffs:
        t = cutoff_time(c)
        lo, hi = label_inputs(m, c)
        try:
            hits = _matching_keys(events, label, key, lo, hi, t, t + pd.Timedelta(days=label.horizon_days))
        except MissingPartitionError as exc:
            exc.add_note(
                f"labels of {m.name} for cut-off {c} need {events.name} through {hi} "
                f"({label.horizon_days:g}-day horizon + {label.grace_days} grace days): the label is not mature"
            )
            raise
        known = first_known.index.to_numpy()[first_known.to_numpy() < t.value // 1000]
        frame = label_rows(known, hits, t, key, key_type)
        producer = {
            "job": "build_labels",
            "model": m.name,
            "definition": label_definition(m),
            "horizon_days": label.horizon_days,
            "grace_days": label.grace_days,
            "inputs_through": hi,
            "cutoff": t.isoformat(),
        }
        inputs = {
            f"{hist.name}/ds={first}..{_shift(c, -1)}": inputs_fingerprint(hist, first, _shift(c, -1)),
            f"{events.name}/ds={lo}..{hi}": inputs_fingerprint(events, lo, hi),
        }
        producer = _gated(lake, inputs, producer, allow_unvalidated)
        manifests.append(table.write_partition(c, frame, producer=producer, inputs=inputs))
    return manifests


def label_rows(known, hits, cutoff: pd.Timestamp, key: str, key_type: str = "int64") -> pd.DataFrame:
    """Labels frame for one cut-off: one row per known entity (sorted), 1 if among ``hits``."""
    ids = np.unique(_keys(known, key_type))
    label = np.isin(ids, _keys(hits, key_type)).astype(np.int8)
    as_of = pd.Series(np.full(len(ids), cutoff.value // 1000, dtype=np.int64)).astype("datetime64[us]")
    return pd.DataFrame({key: ids, "as_of": as_of.dt.tz_localize("UTC"), LABEL: label})


def _keys(values, key_type: str) -> np.ndarray:
    if key_type == "int64":
        return np.asarray(values, dtype=np.int64)
    return np.asarray([str(v) for v in values], dtype=object)


def _first_known(raw: Table, key: str, ingested_at: str, ds_from: str, ds_to: str) -> pd.Series:
    """Per entity, the earliest ``ingested_at`` (int64 us) in the partitions of the range."""
    best: pd.Series | None = None
    for batch in raw.iter_batches(ds_from, ds_to, columns=[key, ingested_at]):
        batch = batch.loc[batch[key].notna()]
        us = _us(batch[ingested_at])
        part = pd.Series(us, index=batch[key].to_numpy()).groupby(level=0).min()
        best = part if best is None else pd.concat([best, part]).groupby(level=0).min()
    return best if best is not None else pd.Series([], dtype=np.int64)


def _matching_keys(
    raw: Table, label: EventLabel, key: str, ds_from: str, ds_to: str, start: pd.Timestamp, end: pd.Timestamp
) -> np.ndarray:
    """Keys with an event ``start <= event_ts < end`` matching ``label.where``, in the partitions of the range."""
    lo, hi = start.value // 1000, end.value // 1000
    ts_col = label.source.event_time
    cols = list(dict.fromkeys([key, ts_col, *(c.column for c in label.where)]))
    found = []
    for batch in raw.iter_batches(ds_from, ds_to, columns=cols):
        ts = _us(batch[ts_col])
        keep = (ts >= lo) & (ts < hi) & batch[key].notna().to_numpy()
        for cond in label.where:
            keep &= condition_mask(batch, cond)
        found.append(pd.unique(batch[key].to_numpy()[keep]))
    return np.concatenate(found) if found else np.array([], dtype=object)


# ---------------------------------------------------------------------------- query rows


def _outcome_labels(cfg: Config, m: Model, cutoffs: list[str], allow_unvalidated: bool) -> list[Manifest]:
    q: QueryRows = m.queries
    label: OutcomeLabel = m.label
    src = q.source
    lake = cfg.lake()
    raw = lake.table(src.table)
    first = raw.first_ds()
    if first is None:
        raise ValueError(f"no {raw.name} partitions in {lake.root}; run the ingest first")
    ids = [c for c, _ in m.id_columns]
    outcome_cols = [c.column for c in label.when] if label.source is None else []  # else: from the outcome rows
    cols = list(dict.fromkeys([*ids, q.time, src.ingested_at, *outcome_cols]))
    table = labels_table(lake, m)
    manifests = []
    for d in cutoffs:
        lo, hi = label_inputs(m, d)
        lo = max(lo, first)
        try:
            rows = raw.read(lo, hi, columns=cols)
        except MissingPartitionError as exc:
            exc.add_note(
                f"labels of {m.name} for ds={d} read the rows of {raw.name} ingested {lo}..{hi} "
                f"(as_of day -1 .. +1 + {label.maturity_hours:g}h maturity): the label is not mature"
            )
            raise
        inputs = {f"{raw.name}/ds={lo}..{hi}": inputs_fingerprint(raw, lo, hi)}
        without = 0
        if label.source is not None:
            rows, without, out_inputs = _with_outcomes(lake, m, rows, d)
            inputs.update(out_inputs)
        frame = outcome_rows(m, rows, d)
        producer = {
            "job": "build_labels",
            "model": m.name,
            "definition": label_definition(m),
            "horizon_days": horizon_days(m),
            "grace_days": 0,
            "inputs_through": hi,
            "cutoff": cutoff_time(d).isoformat(),
            **({"queries_without_outcome": without} if label.source is not None else {}),
        }
        producer = _gated(lake, inputs, producer, allow_unvalidated)
        manifests.append(table.write_partition(d, frame, producer=producer, inputs=inputs))
    return manifests


def _with_outcomes(lake: Lake, m: Model, rows: pd.DataFrame, ds: str) -> tuple[pd.DataFrame, int, dict]:
    """The query rows of ``ds`` joined (by query id) with their outcome rows from the label's source;
    returns the joined rows, how many query rows of the day had no outcome, and the inputs read."""
    out_src = m.label.source
    qid = m.query_id
    table = lake.table(out_src.table)
    first = table.first_ds()
    lo, hi = outcome_inputs(m, ds)
    lo = max(lo, first) if first else lo
    cols = list(dict.fromkeys([qid, out_src.ingested_at, *(c.column for c in m.label.when)]))
    try:
        outcomes = table.read(lo, hi, columns=cols)
    except MissingPartitionError as exc:
        exc.add_note(f"outcomes of {m.name} for ds={ds} are the rows of {table.name} ingested {lo}..{hi}: not mature")
        raise
    outcomes = outcomes.sort_values(out_src.ingested_at, kind="stable").drop_duplicates(qid, keep="last")
    conditions = [c for c in cols if c not in (qid, out_src.ingested_at)]
    joined = rows.drop(columns=[c for c in conditions if c in rows.columns]).merge(
        outcomes[[qid, *conditions]], on=qid, how="inner"
    )
    q = m.queries
    timed = rows.loc[rows[q.time].notna()]
    as_of_us = _us(timed[q.time]) + q.offset_us
    day0 = cutoff_time(ds).value // 1000
    on_day = timed.loc[(as_of_us >= day0) & (as_of_us < day0 + 86_400_000_000), qid].nunique()
    labelled = len(outcome_rows(m, joined, ds))
    return joined, on_day - labelled, {f"{table.name}/ds={lo}..{hi}": inputs_fingerprint(table, lo, hi)}


def outcome_rows(m: Model, rows: pd.DataFrame, ds: str) -> pd.DataFrame:
    """The labels of partition ``ds`` from query-source rows: as_of on day ``ds``, label = any ``when``."""
    q: QueryRows = m.queries
    src = q.source
    ids = [c for c, _ in m.id_columns]
    rows = rows.loc[rows[q.time].notna()]
    as_of_us = _us(rows[q.time]) + q.offset_us
    day0 = cutoff_time(ds).value // 1000
    on_day = (as_of_us >= day0) & (as_of_us < day0 + 86_400_000_000)
    rows, as_of_us = rows.loc[on_day], as_of_us[on_day]
    hit = np.zeros(len(rows), dtype=bool)
    for cond in m.label.when:
        hit |= condition_mask(rows, cond)
    out = rows[ids].copy()
    out["as_of"] = pd.Series(as_of_us, index=rows.index).astype("datetime64[us]").dt.tz_localize("UTC")
    out[LABEL] = hit.astype(np.int8)
    out["_ing"] = _us(rows[src.ingested_at])
    qid = m.query_id
    out = out.sort_values([qid, "_ing"], kind="stable").drop_duplicates(qid, keep="last")
    return out.drop(columns="_ing").reset_index(drop=True)


# ---------------------------------------------------------------------------- helpers


def condition_mask(frame: pd.DataFrame, cond: Condition) -> np.ndarray:
    """Rows of ``frame`` matching ``cond`` (a null value matches only ``is_null``)."""
    s = frame[cond.column]
    present = s.notna().to_numpy()
    if cond.op == "is_null":
        return ~present
    if cond.op == "not_null":
        return present
    if cond.op == "in":
        return s.isin(list(cond.value)).to_numpy() & present
    v = cond.value
    if isinstance(s.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(s.dtype):
        v = pd.Timestamp(v, tz="UTC") if pd.Timestamp(v).tz is None else pd.Timestamp(v)
    ops = {
        ">=": lambda a: a >= v,
        ">": lambda a: a > v,
        "<=": lambda a: a <= v,
        "<": lambda a: a < v,
        "==": lambda a: a == v,
        "!=": lambda a: a != v,
    }
    out = np.zeros(len(s), dtype=bool)
    if present.any():
        out[present] = np.asarray(ops[cond.op](s[present]), dtype=bool)
    return out


def _shift(ds: str, days: int) -> str:
    return (pd.Timestamp(ds) + pd.Timedelta(days=days)).strftime("%Y-%m-%d")


def _us(s: pd.Series) -> np.ndarray:
    """Timestamps as int64 microseconds since the epoch, UTC (naive = UTC)."""
    if s.dt.tz is not None:
        s = s.dt.tz_convert("UTC").dt.tz_localize(None)
    return s.astype("datetime64[us]").to_numpy().view(np.int64)
