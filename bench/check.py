"""Compare a variant's output with the kernel's, row by row (matched on ``query_id``).

Exact variants (the kernel's own engines) must be bit-identical: same keys, same
``as_of``, same integers, same floats bit for bit, same nulls. Native peers must
have the same keys, integers and null pattern exactly, and floats within
``|a - b| <= ATOL + RTOL * |b|`` (their sums run in another order, or difference
prefix sums).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from bench.data import output_files
from bench.featureset import (
    AS_OF,
    ENTITY,
    FLOAT_FEATURES,
    INTEGER_FEATURES,
    OUTPUT_COLUMNS,
    QUERY_ID,
)

RTOL = 1e-9
ATOL = 1e-9


def load(out_dir: str) -> dict[str, np.ndarray] | None:
    """The output columns as numpy arrays sorted by query_id (floats with NaN for null)."""
    files = output_files(out_dir)
    if not files:
        return None
    table = ds.dataset(files, format="parquet").to_table()
    missing = [c for c in OUTPUT_COLUMNS if c not in table.column_names]
    if missing:
        raise KeyError(f"{out_dir}: missing column(s) {missing}")
    order = pc.sort_indices(table.column(QUERY_ID))
    table = table.take(order)
    cols: dict[str, np.ndarray] = {}
    for name in OUTPUT_COLUMNS:
        col = table.column(name)
        if pa.types.is_timestamp(col.type):
            col = pc.cast(col.cast(pa.timestamp("us", tz="UTC")), pa.int64())
        if name in FLOAT_FEATURES:
            cols[name] = col.cast(pa.float64()).to_numpy(zero_copy_only=False)  # null -> NaN
            cols[name + "__null"] = col.is_null().to_numpy(zero_copy_only=False)
        else:
            cols[name + "__null"] = col.is_null().to_numpy(zero_copy_only=False)
            cols[name] = col.fill_null(-1).cast(pa.int64()).to_numpy(zero_copy_only=False)
    return cols


def compare(ref: dict, got: dict, exact: bool) -> dict:
    """``{"status": "equal" | "close" | "MISMATCH", "max_abs_diff", "mismatch_rows", "columns"}``."""
    n = len(ref[QUERY_ID])
    if len(got[QUERY_ID]) != n or not np.array_equal(ref[QUERY_ID], got[QUERY_ID]):
        only_ref = np.setdiff1d(ref[QUERY_ID], got[QUERY_ID]).size
        extra = len(got[QUERY_ID]) - np.unique(got[QUERY_ID]).size + np.setdiff1d(got[QUERY_ID], ref[QUERY_ID]).size
        return {
            "status": "MISMATCH",
            "mismatch_rows": int(only_ref + extra),
            "max_abs_diff": None,
            "columns": {QUERY_ID: f"{only_ref} missing, {extra} extra/duplicate rows"},
        }
    bad = np.zeros(n, dtype=bool)
    per_col: dict[str, int] = {}
    max_diff = 0.0
    bit_equal = True
    for name in (ENTITY, AS_OF, *INTEGER_FEATURES):
        wrong = (ref[name] != got[name]) | (ref[name + "__null"] != got[name + "__null"]) | got[name + "__null"]
        if wrong.any():
            per_col[name] = int(wrong.sum())
            bad |= wrong
    for name in FLOAT_FEATURES:
        a, b = got[name], ref[name]
        null_wrong = ref[name + "__null"] != got[name + "__null"]
        both = ~ref[name + "__null"] & ~got[name + "__null"]
        diff = np.zeros(n)
        diff[both] = np.abs(a[both] - b[both])
        if both.any():
            max_diff = max(max_diff, float(diff[both].max()))
        if exact:
            # Bit for bit: compare the raw 64-bit patterns (distinguishes -0.0 and NaN payloads too).
            wrong = null_wrong | (both & (a.view(np.int64) != b.view(np.int64)))
        else:
            wrong = null_wrong | (both & ~(diff <= ATOL + RTOL * np.abs(b)))
        if (both & (diff != 0)).any():
            bit_equal = False
        if wrong.any():
            per_col[name] = int(wrong.sum())
            bad |= wrong
    if bad.any():
        return {"status": "MISMATCH", "mismatch_rows": int(bad.sum()), "max_abs_diff": max_diff, "columns": per_col}
    return {"status": "equal" if bit_equal else "close", "mismatch_rows": 0, "max_abs_diff": max_diff, "columns": {}}


def label(result: dict | None) -> str:
    if result is None:
        return "unchecked"
    if "error" in result:
        return f"check failed: {result['error']}"
    sample = (
        f" ({result['sampled_rows']:,}-row sample; {result['output_rows']:,} rows)" if "sampled_rows" in result else ""
    )
    if result["status"] == "equal":
        return "equal" + sample
    if result["status"] == "close":
        return f"max abs diff {result['max_abs_diff']:.1e}" + sample
    return f"MISMATCH ({result['mismatch_rows']} rows)" + sample


def sample_reference(events_files, queries_files, modulus: int = 16, remainder: int = 0) -> dict:
    """The kernel's output for the queries of the entities with ``customer_id % modulus == remainder``,
    computed here from just their events: features are per entity, so these rows are exact, at
    1/modulus of the memory of a full reference (the 50M run)."""
    from bench.featureset import FEATURE_SET
    from features import kernel

    if modulus & (modulus - 1):
        raise ValueError("modulus must be a power of two")
    keep = pc.bit_wise_and(pc.field(ENTITY), pa.scalar(modulus - 1, pa.int64())) == remainder
    events = (
        ds.dataset(events_files, format="parquet")
        .to_table(columns=list(FEATURE_SET.event_columns), filter=keep)
        .to_pandas()
    )
    queries = ds.dataset(queries_files, format="parquet").to_table(filter=keep).to_pandas()
    out = kernel.compute(events, queries, FEATURE_SET, mode="as_of")
    with tempfile.TemporaryDirectory() as d:
        pq.write_table(
            pa.Table.from_pandas(out[list(OUTPUT_COLUMNS)], preserve_index=False), os.path.join(d, "part-00000.parquet")
        )
        return load(d)


def restrict(got: dict, query_ids: np.ndarray) -> dict:
    """``got``'s rows whose query_id is in ``query_ids`` (both sorted by query_id)."""
    m = np.isin(got[QUERY_ID], query_ids)
    return {k: v[m] for k, v in got.items()}
