"""Parquet readers that feed LightGBM without materialising the float matrix.

``ParquetSequence`` is a ``lightgbm.Sequence`` over one Parquet file. LightGBM reads it twice
(MEASURED.md): first ``bin_construct_sample_cnt`` single rows in ascending order spread over
all files (an integer index, answered as a float64 row — LightGBM refuses float32 there),
then one sequential pass of ``batch_size`` slices. Both patterns are served from one decoded
row group; all sequences of one dataset share a single slot, so at most one row group is
decoded in the whole process, and it is evicted (and the file closed) when a slice reaches
the end of its file.
"""

from __future__ import annotations

import bisect
import contextlib
import numbers
from collections.abc import Iterator, Sequence

import fsspec
import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

FEATURE_DTYPE = np.float64
#: Rows per block converted to a float matrix for single-row access (the sampling pass).
ROW_BLOCK = 16_384


def to_matrix(
    table: pa.Table | pa.RecordBatch,
    columns: Sequence[str],
    dtype=FEATURE_DTYPE,
    order: str = "C",
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``columns`` of an Arrow table as a float matrix (nulls -> NaN).

    ``order="F"`` (column-major) fills ~3x faster and LightGBM predicts from it as fast; the
    Sequence path needs ``"C"`` (LightGBM pushes rows). ``out``: a flat ``dtype`` buffer of at
    least rows x columns values to fill instead of a new allocation (a scoring worker reuses one:
    the pages of a fresh 40 MB matrix are faulted in on every batch); the result is a contiguous
    view of its start, valid until the buffer is filled again.
    """
    shape = (table.num_rows, len(columns))
    if out is None:
        mat = np.empty(shape, dtype=dtype, order=order)
    else:
        need = shape[0] * shape[1]
        if out.ndim != 1 or out.dtype != np.dtype(dtype) or out.size < need:
            raise ValueError(
                f"out must be a flat {np.dtype(dtype)} buffer of >= {need} values, got {out.dtype} {out.shape}"
            )
        mat = out[:need].reshape(shape, order=order)
    for j, name in enumerate(columns):
        mat[:, j] = _float_column(table.column(name), name)
    return mat


def _check_numeric(t: pa.DataType, name: str) -> None:
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_null(t)):
        raise TypeError(
            f"feature column {name!r} is {t}, not numeric: the dtype contract is float64 "
            "features (encode categories as numeric aggregates in the feature set)"
        )


def _float_column(col, name: str) -> np.ndarray:
    _check_numeric(col.type, name)
    col = pc.cast(col, pa.float64())
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return col.to_numpy(zero_copy_only=False)  # nulls -> NaN


class _Slot:
    """The one decoded row group shared by all sequences of a dataset."""

    def __init__(self) -> None:
        self.owner: ParquetSequence | None = None
        self.rg = -1
        self.table: pa.Table | None = None
        self.block_start = -1
        self.block: np.ndarray | None = None

    def clear(self) -> None:
        self.owner, self.rg, self.table, self.block_start, self.block = None, -1, None, -1, None


class ParquetSequence(lgb.Sequence):
    """Feature rows of one Parquet file as a ``lightgbm.Sequence`` (float64)."""

    def __init__(
        self,
        path: str,
        columns: Sequence[str],
        *,
        batch_size: int = 65_536,
        storage_options: dict | None = None,
        slot: _Slot | None = None,
    ):
        self.path, self.columns = path, list(columns)
        self.batch_size = int(batch_size)
        self.storage_options = dict(storage_options or {})
        self._slot = slot if slot is not None else _Slot()
        self._fh = self._pf = None
        fh, pf = self._open_handle()
        try:
            meta = pf.metadata
            missing = [c for c in self.columns if c not in pf.schema_arrow.names]
            sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        finally:
            fh.close()
        if missing:
            raise KeyError(f"{path}: missing feature column(s) {missing}")
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64).tolist()
        self._n = int(self._starts[-1])

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, idx):
        if isinstance(idx, numbers.Integral):
            i = int(idx) + (self._n if idx < 0 else 0)
            if not 0 <= i < self._n:
                raise IndexError(f"row {idx} out of range for {self._n} rows")
            return self._row(i)
        if isinstance(idx, slice):
            start, stop, step = idx.indices(self._n)
            if step != 1:
                raise ValueError("ParquetSequence slices must have step 1")
            return self._rows(start, stop)
        if isinstance(idx, (list, np.ndarray)):
            return np.stack([self._row(int(i)) for i in idx]) if len(idx) else np.empty((0, len(self.columns)))
        raise TypeError(f"index must be an integer, a slice or a list, got {type(idx).__name__}")

    # ---- access -------------------------------------------------------------------------------
    def _row(self, i: int) -> np.ndarray:
        rg = bisect.bisect_right(self._starts, i) - 1
        table = self._row_group(rg)
        s = self._slot
        local = i - self._starts[rg]
        start = local - local % ROW_BLOCK
        if s.block is None or s.block_start != start:
            s.block = to_matrix(table.slice(start, ROW_BLOCK), self.columns)
            s.block_start = start
        return s.block[local - start].copy()  # owns its data: LightGBM keeps sampled rows

    def _rows(self, start: int, stop: int) -> np.ndarray:
        if stop <= start:
            return np.empty((0, len(self.columns)), dtype=FEATURE_DTYPE)
        out = np.empty((stop - start, len(self.columns)), dtype=FEATURE_DTYPE)
        pos = start
        while pos < stop:
            rg = bisect.bisect_right(self._starts, pos) - 1
            end = min(stop, self._starts[rg + 1])
            table = self._row_group(rg)
            lo = pos - self._starts[rg]
            out[pos - start : end - start] = to_matrix(table.slice(lo, end - pos), self.columns)
            pos = end
        if stop == self._n:
            self.release()  # end of file: the pass moves on to the next file
        return out

    def _row_group(self, rg: int) -> pa.Table:
        s = self._slot
        if s.owner is not self or s.rg != rg:
            if s.owner is not None and s.owner is not self:
                s.owner._close()
            s.clear()
            if self._pf is None:
                self._fh, self._pf = self._open_handle()
            s.table = self._pf.read_row_group(rg, columns=self.columns)
            s.owner, s.rg = self, rg
        return s.table

    # ---- files --------------------------------------------------------------------------------
    def release(self) -> None:
        """Drop the cached row group (if it is this file's) and close the file."""
        if self._slot.owner is self:
            self._slot.clear()
        self._close()

    def _close(self) -> None:
        if self._fh is not None:
            self._fh.close()
        self._fh = self._pf = None

    def _open_handle(self):
        fs, p = fsspec.core.url_to_fs(self.path, **self.storage_options)
        fh = fs.open(p, "rb")
        return fh, pq.ParquetFile(fh, pre_buffer=False)


def parquet_sequences(
    files: Sequence[str], columns: Sequence[str], *, batch_size: int = 65_536, storage_options: dict | None = None
) -> list[ParquetSequence]:
    """One sequence per file, sharing one row-group slot; empty files are skipped."""
    slot = _Slot()
    seqs = [
        ParquetSequence(f, columns, batch_size=batch_size, storage_options=storage_options, slot=slot) for f in files
    ]
    return [s for s in seqs if len(s)]


def read_column(files: Sequence[str], column: str, dtype=np.float64, storage_options: dict | None = None) -> np.ndarray:
    """One column of all files, concatenated in file order (labels stay in memory this way)."""
    parts = []
    for f in files:
        fs, p = fsspec.core.url_to_fs(f, **(storage_options or {}))
        with fs.open(p, "rb") as fh:
            col = pq.ParquetFile(fh).read(columns=[column]).column(column)
        if col.null_count:
            raise ValueError(f"{f}: column {column!r} has {col.null_count} null(s)")
        parts.append(col.to_numpy().astype(dtype, copy=False))
    return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)


def iter_matrices(
    files: Sequence[str],
    columns: Sequence[str],
    *,
    batch_rows: int = 100_000,
    extra: Sequence[str] = (),
    storage_options: dict | None = None,
    order: str = "F",
) -> Iterator[tuple[np.ndarray, pa.Table]]:
    """``(float matrix of columns, Arrow table of extra columns)`` per bounded batch, in file order."""
    wanted = list(dict.fromkeys([*columns, *extra]))
    for tbl in iter_tables(files, wanted, batch_rows=batch_rows, storage_options=storage_options, use_threads=True):
        yield to_matrix(tbl, columns, order=order), tbl.select(list(extra))


def iter_tables(
    files: Sequence[str],
    columns: Sequence[str],
    *,
    batch_rows: int = 100_000,
    storage_options: dict | None = None,
    use_threads: bool = False,
) -> Iterator[pa.Table]:
    """``columns`` of ``files`` as Arrow tables of at most ``batch_rows`` rows, in file order, decoded in
    the calling thread — single-threaded unless ``use_threads`` (a scorer decodes here while its workers
    predict); local files are memory-mapped, others read through fsspec. A file missing one of
    ``columns`` raises a KeyError naming it when it is reached."""
    for f in files:
        fs, p = fsspec.core.url_to_fs(f, **(storage_options or {}))
        with contextlib.ExitStack() as stack:
            if isinstance(fs, LocalFileSystem):
                pf = stack.enter_context(pq.ParquetFile(p, memory_map=True))
            else:
                pf = stack.enter_context(pq.ParquetFile(stack.enter_context(fs.open(p, "rb"))))
            missing = [c for c in columns if c not in pf.schema_arrow.names]
            if missing:
                raise KeyError(f"{f}: missing column(s) {missing}")
            for batch in pf.iter_batches(batch_size=batch_rows, columns=list(columns), use_threads=use_threads):
                if batch.num_rows:
                    yield pa.Table.from_batches([batch])


def load_matrix(files: Sequence[str], columns: Sequence[str], storage_options: dict | None = None) -> np.ndarray:
    """All rows of ``files`` as one preallocated float64 matrix: the in-memory reference path."""
    n = 0
    for f in files:
        fs, p = fsspec.core.url_to_fs(f, **(storage_options or {}))
        with fs.open(p, "rb") as fh:
            n += pq.ParquetFile(fh).metadata.num_rows
    out = np.empty((n, len(columns)), dtype=FEATURE_DTYPE, order="F")
    pos = 0
    for m, _ in iter_matrices(files, columns, storage_options=storage_options):
        out[pos : pos + len(m)] = m
        pos += len(m)
    return out
