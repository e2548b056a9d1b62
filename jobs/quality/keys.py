"""Uniqueness across batches with bounded memory.

Each row contributes a 64-bit key (the value itself for one integer column, else a hash of the
key columns) and a 64-bit "content" (a hash of the columns whose equality makes two rows the
same event delivered twice, or the row number when every row counts). Pairs are kept in memory
up to a limit, then spilled to bucket files on local disk by key hash, so a duplicate split across
two batches — or two spill buckets' worth of data — is still found: equal keys always share a
bucket. A key is duplicated when it appears with two or more distinct contents.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import pandas as pd

#: Pairs (16 bytes each) held in memory before spilling: 4M pairs = 64 MiB.
DEFAULT_MAX_IN_MEMORY = 4_000_000
_BUCKET_BITS = 6
_MIX = np.uint64(0x9E3779B97F4A7C15)
_HASH_KEY = "lockstep-uniq-k1"


class KeyTracker:
    """Finds duplicated keys over a stream of DataFrames."""

    def __init__(
        self,
        columns: list[str],
        identical_on: list[str] | None = None,
        max_in_memory: int = DEFAULT_MAX_IN_MEMORY,
        spill_dir: str | None = None,
        exact: bool | None = None,
    ):
        self.columns = list(columns)
        self.identical_on = list(identical_on) if identical_on else None
        self.max_in_memory = max(1, int(max_in_memory))
        self._spill_parent = spill_dir
        self._spill: str | None = None
        self._keys: list[np.ndarray] = []
        self._contents: list[np.ndarray] = []
        self._held = 0
        self.rows = 0  # rows with a complete (non-null) key
        # Keys are the values themselves (one integer column). Say so from the stored schema:
        # pandas turns an integer column with nulls into floats in some batches and not others.
        self.exact = exact

    def add(self, df: pd.DataFrame) -> None:
        keys, contents = self._pairs(df, self.rows)
        self.rows += len(keys)
        self._keys.append(keys)
        self._contents.append(contents)
        self._held += len(keys)
        if self._held > self.max_in_memory:
            self._flush()

    def duplicates(self) -> tuple[int, np.ndarray]:
        """(rows involved in a duplicated key — each distinct content once —, the duplicated keys)."""
        try:
            if self._spill is None:
                return _dups(_cat(self._keys), _cat(self._contents))
            self._flush()
            total, found = 0, []
            for b in range(1 << _BUCKET_BITS):
                k, c = self._read_bucket(b)
                n, d = _dups(k, c)
                total += n
                found.append(d)
            return total, np.sort(_cat(found))
        finally:
            self.close()

    def values_of(self, dup_keys: np.ndarray, batches: Iterable[pd.DataFrame], limit: int) -> list:
        """Actual key values (tuples for several columns) of up to `limit` duplicated keys,
        found by a second pass over `batches` (needed when keys are hashes)."""
        wanted = set(dup_keys.tolist())
        found: dict[int, object] = {}
        for df in batches:
            keys, _ = self._pairs(df, 0)
            sub = df.loc[df[self.columns].notna().all(axis=1), self.columns].reset_index(drop=True)
            for i in np.flatnonzero(np.isin(keys, dup_keys)):
                k = int(keys[i])
                if k in wanted and k not in found:
                    row = sub.iloc[i]
                    found[k] = _plain(row.iloc[0]) if len(self.columns) == 1 else tuple(map(_plain, row))
                    if len(found) >= limit:
                        return list(found.values())
        return list(found.values())

    def close(self) -> None:
        self._keys, self._contents, self._held = [], [], 0
        if self._spill is not None:
            shutil.rmtree(self._spill, ignore_errors=True)
            self._spill = None

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()

    # ---- internals ------------------------------------------------------------------------
    def _pairs(self, df: pd.DataFrame, offset: int) -> tuple[np.ndarray, np.ndarray]:
        complete = df[self.columns].notna().all(axis=1).to_numpy()
        if not complete.all():
            df = df.loc[complete]
        n = len(df)
        col = df[self.columns[0]]
        if self.exact is None:
            self.exact = len(self.columns) == 1 and pd.api.types.is_integer_dtype(col.dtype)
        if self.exact:
            keys = col.to_numpy(dtype=np.int64).view(np.uint64)
        else:
            keys = row_hashes(df, self.columns)
        if self.identical_on:
            contents = row_hashes(df, self.identical_on)
        else:
            contents = np.arange(offset, offset + n, dtype=np.uint64)
        return np.ascontiguousarray(keys, dtype=np.uint64), np.ascontiguousarray(contents, dtype=np.uint64)

    def _flush(self) -> None:
        if not self._keys:
            return
        if self._spill is None:
            self._spill = tempfile.mkdtemp(prefix="lockstep-keys-", dir=self._spill_parent)
        keys, contents = _cat(self._keys), _cat(self._contents)
        self._keys, self._contents, self._held = [], [], 0
        bucket = ((keys * _MIX) >> np.uint64(64 - _BUCKET_BITS)).astype(np.int64)
        order = np.argsort(bucket, kind="stable")
        bucket, keys, contents = bucket[order], keys[order], contents[order]
        bounds = np.searchsorted(bucket, np.arange((1 << _BUCKET_BITS) + 1))
        for b in range(1 << _BUCKET_BITS):
            lo, hi = bounds[b], bounds[b + 1]
            if hi > lo:
                with open(os.path.join(self._spill, f"{b:03d}.bin"), "ab") as fh:
                    np.stack([keys[lo:hi], contents[lo:hi]], axis=1).tofile(fh)

    def _read_bucket(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        path = os.path.join(self._spill, f"{b:03d}.bin")
        if not os.path.exists(path):
            empty = np.empty(0, dtype=np.uint64)
            return empty, empty
        pairs = np.fromfile(path, dtype=np.uint64).reshape(-1, 2)
        return pairs[:, 0].copy(), pairs[:, 1].copy()


def row_hashes(df: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """Row hashes that do not depend on how a batch happened to type its columns (pandas makes an
    integer column with a null float64 in that batch only): numbers hash as float64, timestamps
    as UTC microseconds, everything else as Python objects."""
    canon = {}
    for c in columns:
        s = df[c]
        if pd.api.types.is_bool_dtype(s.dtype) or pd.api.types.is_numeric_dtype(s.dtype):
            canon[c] = pd.to_numeric(s).astype("float64").to_numpy(na_value=np.nan)
        elif isinstance(s.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(s.dtype):
            canon[c] = s.dt.as_unit("us").array.asi8
        else:
            canon[c] = s.astype(object).where(s.notna(), None).to_numpy()
    return pd.util.hash_pandas_object(pd.DataFrame(canon, index=df.index), index=False, hash_key=_HASH_KEY).to_numpy()


def _dups(keys: np.ndarray, contents: np.ndarray) -> tuple[int, np.ndarray]:
    if len(keys) < 2:
        return 0, np.empty(0, dtype=np.uint64)
    order = np.lexsort((contents, keys))
    k, c = keys[order], contents[order]
    distinct = np.ones(len(k), dtype=bool)
    distinct[1:] = (k[1:] != k[:-1]) | (c[1:] != c[:-1])
    k = k[distinct]
    same_as_prev = np.zeros(len(k), dtype=bool)
    same_as_prev[1:] = k[1:] == k[:-1]
    involved = same_as_prev.copy()
    involved[:-1] |= same_as_prev[1:]
    return int(involved.sum()), np.unique(k[same_as_prev])


def _cat(arrays: list[np.ndarray]) -> np.ndarray:
    if not arrays:
        return np.empty(0, dtype=np.uint64)
    return np.concatenate(arrays) if len(arrays) > 1 else arrays[0]


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, pd.Timestamp):
        return v.isoformat()
    return v


def key_values(
    tracker: KeyTracker, dup_keys: np.ndarray, limit: int, reread: Callable[[], Iterator[pd.DataFrame]] | None
) -> list:
    """Sample values of duplicated keys: the keys themselves when exact, else from a second pass
    (``reread``), else the hashes."""
    if tracker.exact:
        return [int(k) for k in dup_keys[:limit].view(np.int64)]
    if reread is not None:
        return tracker.values_of(dup_keys[: max(limit * 4, limit)], reread(), limit)
    return [f"hash:{int(k):016x}" for k in dup_keys[:limit]]
