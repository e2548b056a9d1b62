"""The serving path: one request, one entity, the entity's recent events — same kernel."""
from __future__ import annotations

import math

import pandas as pd

from features.kernel import AS_OF, compute
from features.spec import FeatureSet


def compute_one(entity_events: pd.DataFrame, entity_id, request_time, fs: FeatureSet,
                mode: str = "known_at") -> dict[str, int | float | None]:
    """Feature values for one ``(entity, request_time)``, as plain Python values (null -> None).

    ``entity_events`` may hold only this entity's events and only the last
    ``fs.horizon_days`` of them: the kernel gives the same bits as on the full table.
    """
    query = pd.DataFrame({fs.entity: [entity_id], AS_OF: [pd.Timestamp(request_time)]})
    if len(entity_events):
        entity_events = entity_events[entity_events[fs.entity] == entity_id]
    row = compute(entity_events, query, fs, mode).iloc[0]
    values: dict[str, int | float | None] = {}
    for f in fs.features:
        v = row[f.name]
        if f.is_integer:
            values[f.name] = int(v)
        else:
            v = float(v)
            values[f.name] = None if math.isnan(v) else v
    return values
