"""Local engine: the whole input in one process, one ``compute`` call (small data, tests, the demo)."""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd

from features import kernel
from features.spec import FeatureSet
from jobs.engines import Snapshot, Snapshots, snapshot_queries
from jobs.engines.bucketing import (
    default_events_schema,
    default_queries_schema,
    normalize_keys,
    read_frame,
)


def run(cfg, fs: FeatureSet, events_files: list[str], queries, mode: str) -> Iterator[pd.DataFrame]:
    """Yields one frame: ``compute`` over all events and all queries."""
    opts = getattr(cfg, "storage_options", None) or {}
    events = read_frame(events_files, fs.entity, fs.event_columns, opts, empty=default_events_schema(fs))
    yield kernel.compute(events, load_queries(fs, events, queries, mode, opts), fs, mode)


def load_queries(fs: FeatureSet, events: pd.DataFrame, queries, mode: str, storage_options=None) -> pd.DataFrame:
    """The query table: a Snapshot's from ``events``, a frame (key as int64 or string) or files read whole."""
    if isinstance(queries, (Snapshot, Snapshots)):
        return snapshot_queries(events, fs, queries, mode)
    if isinstance(queries, pd.DataFrame):
        q = queries.copy()
        q[fs.entity] = normalize_keys(q[fs.entity])  # int64 or string keys on every engine
        return q
    return read_frame(queries, fs.entity, None, storage_options, empty=default_queries_schema(fs))
