"""Repurchase labels for CDNOW-shaped raw events -> ``labels/ds=<cut-off>``.

Definition (``LABEL_DEFINITION``), for a cut-off date ``C`` (the instant ``C 00:00 UTC``):

* population: every customer *known* at ``C``, i.e. with at least one purchase whose
  ``ingested_at < C`` — exactly the customers a service running at ``C`` could score;
* label: 1 when the customer has a purchase with ``C <= event_ts < C + horizon``
  (90 days by default), else 0;
* ``as_of = C``: the training set computes the row's features point in time at ``C``
  (``t - w <= event_ts < t``, and in ``known_at`` mode ``ingested_at < t``), so nothing
  at or after the cut-off can reach a feature; only the label looks forward.

A label is *mature* once its whole horizon is in the lake: the label-window purchases are
looked up in the ``raw_events`` ingest partitions ``C .. C + horizon - 1 + grace_days``; a
cut-off whose partitions are not all published fails loudly (MissingPartitionError naming
the days) instead of giving silently smaller labels. A purchase that arrives later than
``grace_days`` after its horizon is not counted (default 0: CDNOW lands every purchase on
its own day). Labels of ``C`` equal those of ``feature_snapshots`` ``ds = C - 1`` in
population (every customer as known at ``C 00:00``).

Cut-offs are weekly, on Mondays (``weekly_cutoffs``), so every run and backfill agrees on
the same dates. CDNOW spans 1997-01-01..1998-06-30; the last mature Monday with a 90-day
horizon is 1998-03-30.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa

from jobs.config import Config
from jobs.lake import Lake, Manifest, MissingPartitionError, Table, day_range, inputs_fingerprint
from jobs.schemas import RAW_EVENTS_TABLE, UTC_US

LABELS_TABLE = "labels"
LABEL = "label"
HORIZON_DAYS = 90
CUTOFF_WEEKDAY = 0  # Monday
LABEL_DEFINITION = (
    "label = 1 if the customer has a purchase with cutoff <= event_ts < cutoff + horizon_days, else 0; "
    "population: customers with a purchase ingested before the cutoff; features as_of = cutoff"
)

LABELS_SCHEMA = pa.schema(
    [
        pa.field("customer_id", pa.int64(), nullable=False),
        pa.field("as_of", UTC_US, nullable=False),
        pa.field(LABEL, pa.int8(), nullable=False),
    ]
)

_ENTITY = "customer_id"


def labels_table(lake: Lake) -> Table:
    return lake.table(LABELS_TABLE, LABELS_SCHEMA)


def cutoff_time(ds: str | dt.date) -> pd.Timestamp:
    """The cut-off instant of labels partition ``ds``: ``ds 00:00 UTC``."""
    return pd.Timestamp(str(ds), tz="UTC")


def weekly_cutoffs(ds_from: str | dt.date, ds_to: str | dt.date) -> list[str]:
    """The Mondays in ``[ds_from, ds_to]`` (YYYY-MM-DD)."""
    start, end = pd.Timestamp(str(ds_from)), pd.Timestamp(str(ds_to))
    if end < start:
        raise ValueError(f"empty cut-off range {start.date()}..{end.date()}")
    return [d for d in day_range(start.date(), end.date()) if dt.date.fromisoformat(d).weekday() == CUTOFF_WEEKDAY]


def horizon_end_ds(ds: str, horizon_days: int = HORIZON_DAYS, grace_days: int = 0) -> str:
    """The last ingest partition a label of cut-off ``ds`` reads."""
    return (pd.Timestamp(ds) + pd.Timedelta(days=horizon_days - 1 + grace_days)).strftime("%Y-%m-%d")


def latest_mature_cutoff(lake: Lake, horizon_days: int = HORIZON_DAYS, grace_days: int = 0) -> str | None:
    """The last Monday whose label horizon is entirely in the lake (None if there is none)."""
    raw = lake.table(RAW_EVENTS_TABLE)
    last = raw.last_ds()
    if last is None:
        return None
    c = pd.Timestamp(last) - pd.Timedelta(days=horizon_days - 1 + grace_days)
    c -= pd.Timedelta(days=(c.weekday() - CUTOFF_WEEKDAY) % 7)
    first = raw.first_ds()
    return c.strftime("%Y-%m-%d") if c.strftime("%Y-%m-%d") > first else None


def label_rows(known: np.ndarray, buyers: np.ndarray, cutoff: pd.Timestamp) -> pd.DataFrame:
    """Labels frame for one cut-off: one row per known customer (sorted), 1 if among buyers."""
    ids = np.unique(np.asarray(known, dtype=np.int64))
    label = np.isin(ids, np.asarray(buyers, dtype=np.int64)).astype(np.int8)
    as_of = pd.Series(np.full(len(ids), cutoff.value // 1000, dtype=np.int64)).astype("datetime64[us]")
    return pd.DataFrame({_ENTITY: ids, "as_of": as_of.dt.tz_localize("UTC"), LABEL: label})


def build_labels(
    cfg: Config, cutoffs: Iterable[str], horizon_days: int = HORIZON_DAYS, grace_days: int = 0
) -> list[Manifest]:
    """Compute and publish ``labels/ds=C`` for each cut-off ``C`` (replacing any previous version).

    Memory is per customer, not per event: one streamed pass collects each customer's first
    ingestion time, then each cut-off streams only its label-window partitions.
    """
    if horizon_days < 1 or grace_days < 0:
        raise ValueError("horizon_days must be >= 1 and grace_days >= 0")
    cutoffs = sorted({str(pd.Timestamp(str(c)).date()) for c in cutoffs})
    if not cutoffs:
        return []
    lake = cfg.lake()
    raw = lake.table(RAW_EVENTS_TABLE)
    first = raw.first_ds()
    if first is None or first >= cutoffs[0]:
        raise ValueError(
            f"no raw_events partitions before the first cut-off {cutoffs[0]} in {lake.root}; run the ingest first"
        )
    last_history = _day_before(cutoffs[-1])
    first_known = _first_known(raw, first, last_history)
    table = labels_table(lake)
    manifests = []
    for c in cutoffs:
        t = cutoff_time(c)
        window_end = horizon_end_ds(c, horizon_days, grace_days)
        try:
            buyers = _buyers(raw, c, window_end, t, t + pd.Timedelta(days=horizon_days))
        except MissingPartitionError as exc:
            exc.add_note(
                f"labels for cut-off {c} need raw_events through {window_end} "
                f"({horizon_days}-day horizon + {grace_days} grace days): the label is not mature"
            )
            raise
        known = first_known.index.to_numpy()[first_known.to_numpy() < t.value // 1000]
        frame = label_rows(known, buyers, t)
        producer = {
            "job": "build_labels",
            "definition": LABEL_DEFINITION,
            "horizon_days": horizon_days,
            "grace_days": grace_days,
            "cutoff": t.isoformat(),
        }
        inputs = {
            f"{RAW_EVENTS_TABLE}/ds={first}..{_day_before(c)}": inputs_fingerprint(raw, first, _day_before(c)),
            f"{RAW_EVENTS_TABLE}/ds={c}..{window_end}": inputs_fingerprint(raw, c, window_end),
        }
        manifests.append(table.write_partition(c, frame, producer=producer, inputs=inputs))
    return manifests


def _day_before(ds: str) -> str:
    return (pd.Timestamp(ds) - pd.Timedelta(days=1)).strftime("%Y-%m-%d")


def _first_known(raw: Table, ds_from: str, ds_to: str) -> pd.Series:
    """Per customer, the earliest ``ingested_at`` (int64 us) in the partitions of the range."""
    best: pd.Series | None = None
    for batch in raw.iter_batches(ds_from, ds_to, columns=[_ENTITY, "ingested_at"]):
        us = _us(batch["ingested_at"])
        part = pd.Series(us, index=batch[_ENTITY].to_numpy(dtype=np.int64)).groupby(level=0).min()
        best = part if best is None else pd.concat([best, part]).groupby(level=0).min()
    return best if best is not None else pd.Series([], dtype=np.int64)


def _buyers(raw: Table, ds_from: str, ds_to: str, start: pd.Timestamp, end: pd.Timestamp) -> np.ndarray:
    """Customers with an event ``start <= event_ts < end`` in the ingest partitions of the range."""
    lo, hi = start.value // 1000, end.value // 1000
    found = []
    for batch in raw.iter_batches(ds_from, ds_to, columns=[_ENTITY, "event_ts"]):
        ts = _us(batch["event_ts"])
        found.append(np.unique(batch[_ENTITY].to_numpy(dtype=np.int64)[(ts >= lo) & (ts < hi)]))
    return np.unique(np.concatenate(found)) if found else np.array([], dtype=np.int64)


def _us(s: pd.Series) -> np.ndarray:
    """Timestamps as int64 microseconds since the epoch, UTC (naive = UTC)."""
    if s.dt.tz is not None:
        s = s.dt.tz_convert("UTC").dt.tz_localize(None)
    return s.astype("datetime64[us]").to_numpy().view(np.int64)
