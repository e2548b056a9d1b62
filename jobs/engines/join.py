"""The point-in-time join of all of a model's feature sets for its query rows.

``join_features(cfg, model, queries)`` runs the engine (:func:`jobs.engines.run`) once per
:class:`features.model.Join`, in join order. Each pass reads the ingest partitions of that
set's own source (``fs.source.table``) and takes the previous pass's output as its queries,
so the features of earlier sets (and every other query column) pass through the kernel
unchanged. Between passes the rows live in Parquet files under a ``cfg.scratch("join")``
directory (removed afterwards), never in the driver's memory, so the join is out of core on
Dask and Spark and bit-identical across engines (each pass is).

Key mapping: a join binds a set to one query column (``Join.key``, default the set's
entity). When that column is not named like the set's entity, it is renamed to the entity
for the pass and back after it (a query column that already has the entity's name is kept
aside under a temporary name for the pass).

Events read per pass (ingest partitions of ``fs.source.table``, which must all be
published: a gap is a loud ``MissingPartitionError``):

* ``known_at`` (what a service knew): the first partition through the day of the latest
  ``as_of`` minus one microsecond; a partition holds what was ingested that day, so later
  partitions cannot matter;
* ``as_of`` (event time; late arrivals count): the first partition through
  ``events_through`` when given (the training set passes the label's own last input day),
  else through the table's last partition.

"The first partition" is the table's first, or — for a set whose every window is bounded
(``FeatureSet.horizon_days``) — the day of the earliest ``as_of`` minus the longest window
(:func:`history_start`), whichever is later: an event inside a window was ingested at or after its
event time (the raw suite checks ``ingested_at >= event_ts`` and that a partition holds the day's
ingestion times), so no earlier partition can hold one. A 7-day set reads 8 days, not the year.

Output frames: the model's id columns, ``as_of``, the pass-through query columns (in query
order), then ``model.feature_names``. For a one-set model whose query column is the set's
entity this is exactly what one ``engines.run`` yields.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.model import Join, Model
from features.spec import MODES
from jobs import engines
from jobs.engines import AS_OF, Snapshot

#: Prefix of a query column kept aside while a pass uses its name for the set's entity.
SAVED_PREFIX = "__lockstep_saved__"


def join_features(
    cfg,
    model: Model,
    queries: pd.DataFrame | Sequence[str] | Snapshot,
    *,
    modes: str | Mapping[str, str] | None = None,
    events_through: str | None = None,
    **engine_options,
) -> Iterator[pd.DataFrame]:
    """Features of every set ``model`` joins, point in time, for ``queries``.

    ``queries``: a DataFrame or Parquet files with the model's id columns (the join keys at
    least), ``as_of`` and any pass-through columns (e.g. ``label``); or a
    :class:`jobs.engines.Snapshot` (every entity of the first set known at an instant; only
    when the first join's query column is that set's entity). ``modes``: one mode for every
    set, or ``{feature set name: mode}``; default each set's ``training_mode``.
    ``engine_options`` go to every pass (e.g. ``client=`` for Dask). Yields at least one
    frame (possibly empty).
    """
    mode_of = _modes(model, modes)
    _check_queries(model, queries, getattr(cfg, "storage_options", None))
    as_of_min, as_of_max = as_of_bounds(cfg, queries)
    joins = model.joins
    scratch = None
    try:
        current = queries
        for i, join in enumerate(joins):
            fs = join.feature_set
            mode = mode_of[fs.name]
            events = _events_files(cfg, fs, mode, as_of_min, as_of_max, events_through)
            if isinstance(current, Snapshot):
                if join.key_name != fs.entity:
                    raise ValueError(
                        f"model {model.name!r}: a Snapshot query needs the first join bound to its set's entity "
                        f"({fs.entity!r}), not {join.key_name!r}"
                    )
                pass_queries = current
            elif isinstance(current, pd.DataFrame):
                pass_queries = current.rename(columns=_to_pass(join, current.columns))
            else:
                if scratch is None:
                    scratch = cfg.scratch("join")
                pass_queries = _renamed_files(cfg, current, join, f"{scratch}/queries-{i}")
            frames = engines.run(cfg, fs, events, pass_queries, mode, **engine_options)
            back = _from_pass(join)
            if i == len(joins) - 1:
                for frame in frames:
                    yield _ordered(model, frame.rename(columns=back))
                return
            if scratch is None:
                scratch = cfg.scratch("join")
            current = _write_pass(cfg, frames, back, f"{scratch}/pass-{i}")
    finally:
        if scratch is not None:
            _remove(cfg, scratch)


def output_columns(model: Model, query_columns: Sequence[str]) -> list[str]:
    """The column order of ``join_features``'s frames for queries with ``query_columns``."""
    ids = [c for c, _ in model.id_columns]
    feats = list(model.feature_names)
    extra = [c for c in query_columns if c not in ids and c != AS_OF and c not in feats]
    return [*ids, AS_OF, *extra, *feats]


# ---------------------------------------------------------------------------- helpers


def _modes(model: Model, modes) -> dict[str, str]:
    names = [fs.name for fs in model.feature_sets]
    if modes is None:
        out = {fs.name: fs.training_mode for fs in model.feature_sets}
    elif isinstance(modes, str):
        out = dict.fromkeys(names, modes)
    else:
        unknown = sorted(set(modes) - set(names))
        if unknown:
            raise KeyError(f"modes name feature set(s) {unknown} that model {model.name!r} does not join ({names})")
        out = {fs.name: modes.get(fs.name, fs.training_mode) for fs in model.feature_sets}
    bad = {k: v for k, v in out.items() if v not in MODES}
    if bad:
        raise ValueError(f"unknown mode(s) {bad}; expected one of {MODES}")
    return out


def _check_queries(model: Model, queries, storage_options=None) -> None:
    if isinstance(queries, Snapshot):
        return
    if isinstance(queries, (str, bytes)):
        raise TypeError("queries must be a DataFrame, a list of Parquet file paths or a Snapshot, not one string")
    need = [*dict.fromkeys(j.key_name for j in model.joins), AS_OF]
    if isinstance(queries, pd.DataFrame):
        have = list(queries.columns)
    elif isinstance(queries, Sequence):
        if not queries:
            return
        have = _file_columns(queries[0], storage_options)
    else:
        raise TypeError(f"queries must be a DataFrame, a list of Parquet file paths or a Snapshot, got {type(queries)}")
    missing = [c for c in need if c not in have]
    if missing:
        raise KeyError(f"model {model.name!r}: queries are missing column(s) {missing}; they have {have}")


def _file_columns(path: str, storage_options=None) -> list[str]:
    fs, p = fsspec.core.url_to_fs(path, **(storage_options or {}))
    with fs.open(p, "rb") as f:
        return list(pq.ParquetFile(f).schema_arrow.names)


def as_of_bounds(cfg, queries) -> tuple[pd.Timestamp | None, pd.Timestamp | None]:
    """The earliest and latest ``as_of`` of ``queries`` (a frame, Parquet files or a Snapshot; Nones
    for no rows)."""
    if isinstance(queries, Snapshot):
        return queries.as_of, queries.as_of
    if isinstance(queries, pd.DataFrame):
        if queries.empty:
            return None, None
        s = pd.to_datetime(queries[AS_OF], utc=True)
        return s.min(), s.max()
    opts = getattr(cfg, "storage_options", None) or {}
    lo = hi = None
    for path in queries:
        fs, p = fsspec.core.url_to_fs(path, **opts)
        with fs.open(p, "rb") as f:
            col = pq.ParquetFile(f).read(columns=[AS_OF]).column(AS_OF)
        if len(col) == 0:
            continue
        bounds = pc.min_max(col)
        first, last = (_utc(bounds[k].as_py()) for k in ("min", "max"))
        lo = first if lo is None or first < lo else lo
        hi = last if hi is None or last > hi else hi
    return lo, hi


def _utc(value) -> pd.Timestamp:
    t = pd.Timestamp(value)
    return t.tz_localize("UTC") if t.tz is None else t.tz_convert("UTC")


def history_start(fs, as_of) -> str | None:
    """The first ingest partition that can hold an event inside a window of ``fs`` for a query at
    ``as_of``: the day of ``as_of`` minus the set's longest window; None when a window is unbounded
    (every partition can) or there is no query."""
    horizon = fs.horizon_days
    if horizon is None or as_of is None:
        return None
    return (pd.Timestamp(as_of).tz_convert("UTC") - pd.Timedelta(days=horizon)).strftime("%Y-%m-%d")


def first_read(fs, first: str, as_of) -> str:
    """The first partition a read of ``fs`` for queries from ``as_of`` on needs, given the table's
    ``first``: :func:`history_start` when that is later, else ``first``."""
    return max(first, history_start(fs, as_of) or first)


def events_range(
    cfg,
    fs,
    mode: str,
    as_of_max,
    events_through: str | None = None,
    *,
    first: str | None = None,
    as_of_min=None,
) -> tuple[str, str] | None:
    """``(first, last)`` ingest partitions of ``fs.source.table`` a pass reads (module docstring);
    None when there are none (no source, no queries, an empty table). ``first``: the table's first
    partition when the caller already knows it (a range plans many cut-offs; listing is not free).
    ``as_of_min``: the earliest query, which bounds the first partition of a set with bounded windows."""
    if fs.source is None or as_of_max is None:
        return None
    table = cfg.lake().table(fs.source.table)
    first = first or table.first_ds()
    if first is None:
        return None
    first = first_read(fs, first, as_of_min)
    if mode == "known_at":
        last = (as_of_max - pd.Timedelta(microseconds=1)).strftime("%Y-%m-%d")
    else:
        last = events_through or table.last_ds()
    if last < first:
        return None
    return first, last


def _events_files(cfg, fs, mode: str, as_of_min, as_of_max, events_through: str | None) -> list[str]:
    rng = events_range(cfg, fs, mode, as_of_max, events_through, as_of_min=as_of_min)
    if rng is None:
        return []
    return cfg.lake().table(fs.source.table).files(*rng)


def _to_pass(join: Join, columns) -> dict[str, str]:
    """Renames from query naming to the pass's naming (the bound column becomes the entity)."""
    key, entity = join.key_name, join.feature_set.entity
    if key == entity:
        return {}
    out = {key: entity}
    if entity in columns:
        out[entity] = SAVED_PREFIX + entity
    return out


def _from_pass(join: Join) -> dict[str, str]:
    key, entity = join.key_name, join.feature_set.entity
    if key == entity:
        return {}
    return {entity: key, SAVED_PREFIX + entity: entity}


def _ordered(model: Model, frame: pd.DataFrame) -> pd.DataFrame:
    cols = output_columns(model, list(frame.columns))
    if list(frame.columns) == cols:
        return frame
    return frame[cols]


def _renamed_files(cfg, paths: Sequence[str], join: Join, root: str) -> list[str]:
    """Query files as the pass reads them: unchanged, or rewritten (streamed) with the pass's names."""
    paths = list(paths)
    if not paths or join.key_name == join.feature_set.entity:
        return paths
    opts = getattr(cfg, "storage_options", None) or {}
    out = []
    for n, src in enumerate(paths):
        fs, p = fsspec.core.url_to_fs(src, **opts)
        dst = f"{root}/part-{n:05d}.parquet"
        ofs, op = fsspec.core.url_to_fs(dst, **opts)
        ofs.makedirs(op.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(p, "rb") as f, ofs.open(op, "wb") as g:
            pf = pq.ParquetFile(f)
            renames = _to_pass(join, pf.schema_arrow.names)
            names = [renames.get(c, c) for c in pf.schema_arrow.names]
            writer = None
            try:
                for batch in pf.iter_batches():
                    t = pa.Table.from_batches([batch]).rename_columns(names)
                    if writer is None:
                        writer = pq.ParquetWriter(g, t.schema)
                    writer.write_table(t)
                if writer is None:
                    writer = pq.ParquetWriter(g, pf.schema_arrow.empty_table().rename_columns(names).schema)
            finally:
                if writer is not None:
                    writer.close()
        out.append(dst)
    return out


def _write_pass(cfg, frames, back: dict[str, str], root: str) -> list[str]:
    """Each frame of a pass (in query naming) as one Parquet file; empty frames only when all are empty."""
    opts = getattr(cfg, "storage_options", None) or {}
    fs, r = fsspec.core.url_to_fs(root, **opts)
    fs.makedirs(r, exist_ok=True)
    out: list[str] = []
    empty = None
    for n, frame in enumerate(frames):
        frame = frame.rename(columns=back)
        if frame.empty:
            empty = frame if empty is None else empty
            continue
        out.append(_write_frame(fs, f"{r}/part-{n:05d}.parquet", frame, root))
    if not out and empty is not None:
        out.append(_write_frame(fs, f"{r}/part-empty.parquet", empty, root))
    return out


def _write_frame(fs, path: str, frame: pd.DataFrame, root: str) -> str:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    with fs.open(path, "wb") as f:
        pq.write_table(table, f)
    return f"{root.rstrip('/')}/{path.rsplit('/', 1)[-1]}"


def _remove(cfg, url: str) -> None:
    opts = getattr(cfg, "storage_options", None) or {}
    fs, p = fsspec.core.url_to_fs(url, **opts)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(p, recursive=True)
