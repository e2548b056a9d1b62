"""Stable hash buckets of entity keys, and streaming bucketing of Parquet files.

An entity's bucket must not depend on how its key happens to be typed in one
file (Spark's ``xxhash64`` gives int32 and int64 columns different buckets for
equal values — MEASURED.md), so keys are cast to int64 first and then mixed
with splitmix64's finaliser in uint64 arithmetic.

Bucketed files are laid out as ``<root>/bucket=<b>/part-<f>.parquet``: one file
per (bucket, source file), written by exactly one task, so parallel tasks never
share a file and a bucket is read back as the union of its parts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.schemas import RAW_EVENTS

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)

#: Record-batch size when streaming a source file.
BATCH_ROWS = 65_536
#: Buffered rows (over all buckets of one source file) before they are flushed as row groups.
FLUSH_ROWS = 262_144


def as_int64_keys(keys) -> np.ndarray:
    """Entity keys as an int64 numpy array; raises ValueError on nulls or non-integral values."""
    if isinstance(keys, (pa.Array, pa.ChunkedArray)):
        arr = keys
    elif isinstance(keys, (pd.Series, pd.Index)):
        arr = pa.array(keys, from_pandas=True)
    else:
        arr = pa.array(np.asarray(keys))
    if arr.null_count:
        raise ValueError(f"entity keys: {arr.null_count} null value(s)")
    try:
        arr = pc.cast(arr, pa.int64())  # safe cast: 1.5 or "x" raise instead of being truncated
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ValueError(f"entity keys must be integers ({arr.type}): {exc}") from None
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arr.to_numpy(zero_copy_only=False)


def bucket_of(keys, n_buckets: int) -> np.ndarray:
    """Bucket id in ``[0, n_buckets)`` per key (int64 array); equal integer values, any dtype, same bucket."""
    if n_buckets < 1:
        raise ValueError(f"n_buckets must be >= 1, got {n_buckets}")
    z = as_int64_keys(keys).view(np.uint64)
    # splitmix64 finaliser; uint64 array arithmetic wraps modulo 2**64 by design.
    z = z + _GAMMA
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(n_buckets)).astype(np.int64)


def normalize_table(table: pa.Table, key: str, decode_dictionaries: bool = True) -> pa.Table:
    """Key column as int64 and (optionally) dictionary columns decoded, so that the parts of
    a bucket coming from different source files share one schema. Schema metadata (pandas
    dtypes of a bucketed frame) is kept."""
    cols = []
    for name, col in zip(table.column_names, table.columns):
        if name == key and col.type != pa.int64():
            col = pa.chunked_array([as_int64_keys(col)], type=pa.int64())
        elif decode_dictionaries and pa.types.is_dictionary(col.type):
            col = pc.cast(col, col.type.value_type)
        cols.append(col)
    return pa.Table.from_arrays(cols, names=table.column_names, metadata=table.schema.metadata)


def split_by_bucket(table: pa.Table, key: str, n_buckets: int) -> dict[int, pa.Table]:
    """Rows of ``table`` per bucket of ``key``, each keeping the input's row order."""
    if table.num_rows == 0:
        return {}
    b = bucket_of(table.column(key), n_buckets)
    order = np.argsort(b, kind="stable")
    sorted_b = b[order]
    present, starts = np.unique(sorted_b, return_index=True)
    ends = np.r_[starts[1:], len(order)]
    taken = table.take(pa.array(order))
    return {int(p): taken.slice(int(s), int(e - s)) for p, s, e in zip(present, starts, ends)}


def scratch_parquet_options(schema: pa.Schema) -> dict:
    """Writer options for short-lived scratch files: tables are split into many small row
    groups, where dictionary-encoding every column and statistics cost ~3x the write time."""
    strings = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    return {"use_dictionary": strings, "compression": "lz4", "write_statistics": False}


def bucket_path(root: str, bucket: int, part: int) -> str:
    return f"{root.rstrip('/')}/bucket={bucket}/part-{part:05d}.parquet"


class BucketWriter:
    """Writes the tables of one source into ``<root>/bucket=<b>/part-<part>.parquet``, one writer per bucket.

    Rows are buffered across buckets and flushed as one row group per bucket, so
    small batches do not turn into thousands of tiny row groups.
    """

    def __init__(
        self,
        root: str,
        part: int,
        n_buckets: int,
        key: str,
        storage_options: dict | None = None,
        decode_dictionaries: bool = True,
    ):
        self.root, self.part, self.n_buckets, self.key = root, part, n_buckets, key
        self.decode = decode_dictionaries
        self.fs, _ = fsspec.core.url_to_fs(root, **(storage_options or {}))
        self._buffers: dict[int, list[pa.Table]] = {}
        self._buffered = 0
        self._writers: dict[int, tuple[object, pq.ParquetWriter]] = {}
        self.rows: dict[int, int] = {}

    def write(self, table: pa.Table) -> None:
        table = normalize_table(table, self.key, self.decode)
        for b, piece in split_by_bucket(table, self.key, self.n_buckets).items():
            self._buffers.setdefault(b, []).append(piece)
            self._buffered += piece.num_rows
        if self._buffered >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        for b, pieces in self._buffers.items():
            t = pa.concat_tables(pieces)
            if b not in self._writers:
                path = bucket_path(self.root, b, self.part)
                self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
                f = self.fs.open(path, "wb")
                self._writers[b] = (f, pq.ParquetWriter(f, t.schema, **scratch_parquet_options(t.schema)))
            self._writers[b][1].write_table(t)
            self.rows[b] = self.rows.get(b, 0) + t.num_rows
        self._buffers.clear()
        self._buffered = 0

    def close(self) -> dict[int, str]:
        """Flush and close; returns ``{bucket: path}`` of the files written."""
        self.flush()
        for f, w in self._writers.values():
            w.close()
            f.close()
        written = {b: bucket_path(self.root, b, self.part) for b in sorted(self._writers)}
        self._writers.clear()
        return written

    def abort(self) -> None:
        """Close every open file without flushing (after an error; the run's scratch is discarded)."""
        for f, w in self._writers.values():
            for closing in (w.close, f.close):
                with contextlib.suppress(Exception):  # already failing: release what we can
                    closing()
        self._writers.clear()
        self._buffers.clear()


def bucket_parquet_file(
    src: str,
    root: str,
    part: int,
    n_buckets: int,
    key: str,
    columns: Sequence[str] | None = None,
    storage_options: dict | None = None,
    batch_rows: int = BATCH_ROWS,
) -> dict[int, str]:
    """Stream one Parquet file into bucket files (record batches; never the whole table)."""
    fs, path = fsspec.core.url_to_fs(src, **(storage_options or {}))
    writer = BucketWriter(root, part, n_buckets, key, storage_options)
    try:
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            cols = list(columns) if columns is not None else None
            _require(pf.schema_arrow.names, cols or [key], src)
            for batch in pf.iter_batches(batch_size=batch_rows, columns=cols):
                writer.write(pa.Table.from_batches([batch]))
        return writer.close()
    except BaseException:
        writer.abort()
        raise


def bucket_frame(
    df: pd.DataFrame, root: str, part: int, n_buckets: int, key: str, storage_options: dict | None = None
) -> dict[int, str]:
    """Bucket an in-memory frame (e.g. a query table) into bucket files."""
    _require(df.columns, [key], "frame")
    # One source, one schema: dictionary (categorical) columns stay as they are, so the
    # pandas metadata restores the frame's dtypes when a bucket is read back.
    writer = BucketWriter(root, part, n_buckets, key, storage_options, decode_dictionaries=False)
    table = pa.Table.from_pandas(df, preserve_index=False)
    try:
        for start in range(0, table.num_rows, FLUSH_ROWS):
            writer.write(table.slice(start, FLUSH_ROWS))
        return writer.close()
    except BaseException:
        writer.abort()
        raise


def read_tables(
    paths: Iterable[str],
    key: str,
    columns: Sequence[str] | None = None,
    storage_options: dict | None = None,
    decode_dictionaries: bool = True,
) -> pa.Table | None:
    """The union of Parquet files as one normalised Arrow table (None when there are no files)."""
    tables = []
    for p in paths:
        fs, path = fsspec.core.url_to_fs(p, **(storage_options or {}))
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            if columns is not None:
                _require(pf.schema_arrow.names, columns, p)
            table = pf.read(columns=list(columns) if columns is not None else None)
            tables.append(normalize_table(table, key, decode_dictionaries))
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="permissive")


def read_frame(
    paths: Iterable[str],
    key: str,
    columns: Sequence[str] | None = None,
    storage_options: dict | None = None,
    empty: pa.Schema | None = None,
    decode_dictionaries: bool = True,
) -> pd.DataFrame:
    """``read_tables`` as pandas; with no files, an empty frame of schema ``empty``."""
    table = read_tables(paths, key, columns, storage_options, decode_dictionaries)
    if table is None:
        if empty is None:
            raise ValueError("no files to read and no schema for an empty frame")
        table = empty.empty_table()
    return table.to_pandas()


def file_schema(
    path: str, key: str, columns: Sequence[str] | None = None, storage_options: dict | None = None
) -> pa.Schema:
    """The normalised Arrow schema a file's (selected) columns read as."""
    fs, p = fsspec.core.url_to_fs(path, **(storage_options or {}))
    with fs.open(p, "rb") as f:
        schema = pq.ParquetFile(f).schema_arrow
    names = list(columns) if columns is not None else schema.names
    _require(schema.names, names, path)
    return normalize_table(schema.empty_table().select(names), key).schema


def _require(have, need, what: str) -> None:
    missing = [c for c in need if c not in list(have)]
    if missing:
        raise KeyError(f"{what} is missing column(s) {missing}; it has {list(have)}")


def default_events_schema(fs) -> pa.Schema:
    """Schema of an events table with no files: ``RAW_EVENTS`` types where the names match, else float64."""
    known = {f.name: f.type for f in RAW_EVENTS}
    ts = pa.timestamp("us", tz="UTC")
    types = {fs.event_id: pa.int64(), fs.entity: pa.int64(), fs.timestamp: ts, fs.ingested_at: ts}
    return pa.schema([(c, types.get(c, known.get(c, pa.float64()))) for c in fs.event_columns])


def default_queries_schema(fs) -> pa.Schema:
    return pa.schema([(fs.entity, pa.int64()), ("as_of", pa.timestamp("us", tz="UTC"))])
