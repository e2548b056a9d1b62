"""The serving path: one request, one entity, the entity's recent events — same kernel."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from features.kernel import EventIndex, compute_indexed, index_events
from features.spec import FeatureSet


def request_time_us(request_time) -> int:
    """A request time as the kernel's int64 microseconds, UTC (naive = UTC; ns truncated like ``to_us``)."""
    t = pd.Timestamp(request_time)
    if t.tz is None:
        t = t.tz_localize("UTC")
    return int(t.value) // 1000  # Timestamp.value is nanoseconds whatever the unit


def compute_one(
    entity_events: pd.DataFrame | EventIndex, entity_id, request_time, fs: FeatureSet, mode: str = "known_at"
) -> dict[str, int | float | None]:
    """Feature values for one ``(entity, request_time)``, as plain Python values (null -> None).

    ``entity_events`` may hold only this entity's events and only the last
    ``fs.horizon_days`` of them: the kernel gives the same bits as on the full table. It may
    also be a prebuilt :func:`features.kernel.index_events` of them (what the service caches),
    which skips the index build and costs only the evaluation.
    """
    if isinstance(entity_events, EventIndex):
        index = entity_events
    else:
        if len(entity_events):
            entity_events = entity_events[entity_events[fs.entity] == entity_id]
        index = index_events(entity_events, fs)
    arrays = compute_indexed(index, np.array([entity_id]), np.array([request_time_us(request_time)]), fs, mode)
    values: dict[str, int | float | None] = {}
    for f in fs.features:
        v = arrays[f.name][0]
        if f.is_integer:
            values[f.name] = int(v)
        else:
            v = float(v)
            values[f.name] = None if math.isnan(v) else v
    return values


def compute_many(
    index: EventIndex, entity_ids, request_times, fs: FeatureSet, mode: str = "known_at"
) -> list[dict[str, int | float | None]]:
    """:func:`compute_one` for many ``(entity, request_time)`` queries of one prebuilt index, in ONE
    kernel evaluation: the same values, query by query (each (query, window) sums its own rows in
    order, whatever else is in the call), as plain Python values in query order."""
    t_us = np.array([request_time_us(t) for t in request_times], dtype=np.int64)
    arrays = compute_indexed(index, np.array(list(entity_ids)), t_us, fs, mode)
    names, columns = [], []
    for f in fs.features:
        a = arrays[f.name]
        names.append(f.name)
        if f.is_integer:
            columns.append(a.tolist() if a.dtype.kind in "iu" else [int(v) for v in a])  # Python ints
        else:
            columns.append([None if math.isnan(v) else v for v in a.astype(np.float64).tolist()])
    return [dict(zip(names, row)) for row in zip(*columns)] if columns else [{} for _ in range(len(t_us))]
