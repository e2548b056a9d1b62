"""Synthetic training-set-shaped Parquet (float and count features, nulls, a nonlinear label)
for the streamed-vs-in-memory test and the training benchmark."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

LABEL = "label"


def feature_names(n_features: int) -> list[str]:
    return [f"f{j:02d}" for j in range(n_features)]


def make_chunk(rng: np.random.Generator, rows: int, n_features: int) -> pa.Table:
    """``rows`` rows: every 5th feature an int64 count, 2% NaN in the float ones, label 0/1."""
    x = rng.standard_normal((rows, n_features))
    logit = (
        0.8 * x[:, 0]
        - 0.6 * x[:, 1]
        + 0.5 * x[:, 2] * x[:, 3]
        + 0.7 * np.sin(2 * x[:, 4])
        + 0.3 * np.abs(x[:, 5 % n_features])
        - 0.4
    )
    y = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    cols, names = [], feature_names(n_features)
    for j in range(n_features):
        if j % 5 == 4:
            cols.append(pa.array(np.floor(np.abs(x[:, j]) * 3).astype(np.int64)))
        else:
            v = x[:, j]
            v[rng.random(rows) < 0.02] = np.nan
            cols.append(pa.array(v, from_pandas=True))
    return pa.Table.from_arrays(
        [pa.array(np.arange(rows, dtype=np.int64)), pa.array(y), *cols], names=["entity_id", LABEL, *names]
    )


def write_files(
    directory: str,
    rows: int,
    n_features: int,
    *,
    files: int = 4,
    row_group_rows: int = 100_000,
    chunk_rows: int = 250_000,
    seed: int = 0,
) -> list[str]:
    """Write ``rows`` rows into ``files`` Parquet files under ``directory``; returns their paths.

    Dictionary encoding only for no column (floats: MEASURED.md, 45% larger and 3x slower).
    """
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    per_file = -(-rows // files)
    paths, left = [], rows
    for i in range(files):
        n = min(per_file, left)
        if n <= 0:
            break
        path = os.path.join(directory, f"part-{i:05d}.parquet")
        writer = None
        done = 0
        while done < n:
            tbl = make_chunk(rng, min(chunk_rows, n - done), n_features)
            if writer is None:
                writer = pq.ParquetWriter(path, tbl.schema, compression="snappy", use_dictionary=False)
            writer.write_table(tbl, row_group_size=row_group_rows)
            done += tbl.num_rows
        writer.close()
        paths.append(path)
        left -= n
    return paths
