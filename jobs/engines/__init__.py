"""Feature engines: the one kernel (``features.kernel.compute``) on local, Dask and Spark.

``run`` dispatches on ``cfg.engine``; every engine yields frames whose union (in
any order) equals ``compute(all events, all queries)`` exactly. Engine modules are
imported lazily, so importing this package pulls in neither pyspark nor distributed.
Dask and Spark ship the driver's ``features`` package to their workers and refuse a worker
whose kernel differs with :class:`KernelMismatchError` before it computes (``shipping``).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.spec import MODES, FeatureSet
from jobs.engines.shipping import KernelMismatchError

__all__ = ["AS_OF", "KernelMismatchError", "Queries", "Snapshot", "Snapshots", "collect", "run", "snapshot_queries"]

AS_OF = "as_of"
_MODULES = {"local": "jobs.engines.local", "dask": "jobs.engines.dask_engine", "spark": "jobs.engines.spark_engine"}


@dataclass(frozen=True)
class Snapshot:
    """Query every entity as known at ``as_of`` (``snapshot_queries`` applied per bucket)."""

    as_of: pd.Timestamp

    def __post_init__(self) -> None:
        t = pd.Timestamp(self.as_of)
        if pd.isna(t):
            raise ValueError("Snapshot.as_of must be a timestamp")
        # Naive = UTC, as everywhere in Lockstep.
        object.__setattr__(self, "as_of", t.tz_localize("UTC") if t.tz is None else t.tz_convert("UTC"))

    @property
    def cutoffs(self) -> tuple[pd.Timestamp, ...]:
        return (self.as_of,)


@dataclass(frozen=True)
class Snapshots:
    """Several snapshots in one pass: every entity as known at each of ``as_ofs`` (a range backfill).

    The query table of a bucket is the concatenation of its ``Snapshot(t)`` queries for each ``t``,
    so each cut-off's rows are exactly that single snapshot's rows (the kernel evaluates every query
    from its own window rows; the other queries never change its bits).
    """

    as_ofs: tuple[pd.Timestamp, ...]

    def __post_init__(self) -> None:
        times = tuple(Snapshot(t).as_of for t in self.as_ofs)
        if not times:
            raise ValueError("Snapshots needs at least one as_of")
        if len(set(times)) != len(times):
            raise ValueError("Snapshots.as_ofs must be distinct")
        object.__setattr__(self, "as_ofs", times)

    @property
    def cutoffs(self) -> tuple[pd.Timestamp, ...]:
        return self.as_ofs


Queries = pd.DataFrame | Sequence[str] | Snapshot | Snapshots


def snapshot_queries(events: pd.DataFrame, fs: FeatureSet, queries: Snapshot | Snapshots, mode: str) -> pd.DataFrame:
    """The query table of a Snapshot or Snapshots over ``events`` (one bucket's, or all of them).

    One cut-off: ``features.kernel.snapshot_queries``. Several: the concatenation of that function's
    frames for each cut-off, in cut-off order, computed in one pass over ``events`` instead of one per
    cut-off: an entity has an event visible at ``t`` exactly when its earliest visibility instant
    (the least ``event_ts`` — in ``known_at`` mode the least ``max(event_ts, ingested_at)`` — of its
    events) is before ``t``; each cut-off's ids are then those entities, sorted, as the kernel sorts them.
    """
    from features import kernel

    if len(queries.cutoffs) == 1:
        return kernel.snapshot_queries(events, fs, queries.cutoffs[0], mode)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    visible_at = kernel.to_us(events[fs.timestamp], fs.timestamp)
    if mode == "known_at":
        visible_at = np.maximum(visible_at, kernel.to_us(events[fs.ingested_at], fs.ingested_at))
    keyed = events[fs.entity].notna().to_numpy()
    codes, uniques = pd.factorize(events[fs.entity].to_numpy()[keyed])
    first = np.full(len(uniques), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, codes, visible_at[keyed])
    by_first = np.argsort(first, kind="stable")  # entities in order of visibility: a prefix per cut-off
    first_sorted = first[by_first]
    frames = []
    for t in queries.cutoffs:
        t_us = kernel.to_us(pd.Series([t]), AS_OF)[0]
        ids = np.sort(uniques[by_first[: np.searchsorted(first_sorted, t_us, side="left")]])
        frames.append(pd.DataFrame({fs.entity: ids, AS_OF: kernel.from_us(np.full(len(ids), t_us, dtype=np.int64))}))
    return pd.concat(frames, ignore_index=True)


def run(
    cfg, fs: FeatureSet, events_files: Sequence[str], queries: Queries, mode: str = "known_at", **engine_options
) -> Iterator[pd.DataFrame]:
    """Features of ``fs`` for ``queries`` over the events in ``events_files``, on ``cfg.engine``.

    ``queries`` is a DataFrame (``fs.entity``, ``as_of``, any extra columns, passed
    through), a list of Parquet file paths of such rows, a ``Snapshot`` or ``Snapshots``.
    Yields frames (one per bucket or output file; at least one, possibly empty)
    whose union equals ``features.kernel.compute(events, queries, fs, mode)``.
    ``engine_options`` go to the engine (e.g. ``client=`` for Dask).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    engine = getattr(cfg, "engine", None)
    if engine not in _MODULES:
        raise ValueError(f"unknown engine {engine!r}; expected one of {tuple(_MODULES)}")
    if isinstance(events_files, (str, bytes)):
        raise TypeError("events_files must be a list of Parquet file paths, not one string")
    queries = _check_queries(queries, fs)
    module = importlib.import_module(_MODULES[engine])
    return module.run(cfg, fs, list(events_files), queries, mode, **engine_options)


def collect(frames: Iterator[pd.DataFrame], fs: FeatureSet) -> pd.DataFrame:
    """All yielded frames as one, sorted by (entity, as_of) — for small results and tests."""
    out = pd.concat(list(frames), ignore_index=True)
    return out.sort_values([fs.entity, AS_OF], kind="stable", ignore_index=True)


def _check_queries(queries, fs: FeatureSet):
    if isinstance(queries, (Snapshot, Snapshots)):
        return queries
    if isinstance(queries, pd.DataFrame):
        missing = [c for c in (fs.entity, AS_OF) if c not in queries.columns]
        if missing:
            raise KeyError(f"queries frame is missing column(s) {missing}; it has {list(queries.columns)}")
        return queries
    if isinstance(queries, (str, bytes)):
        raise TypeError("queries must be a DataFrame, a list of Parquet file paths or a Snapshot, not one string")
    if isinstance(queries, Sequence):
        return list(queries)
    raise TypeError(f"queries must be a DataFrame, a list of Parquet file paths or a Snapshot, got {type(queries)}")
