"""``kernel``: the practical limit — read everything with pyarrow, one ``features.kernel.compute``
call in this process, write one Parquet file. It is also the reference every other output is
checked against."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from bench.featureset import FEATURE_SET, OUTPUT_COLUMNS
from features import kernel

KIND = "kernel"
DESCRIPTION = "features.kernel.compute over all events and queries in one process (pyarrow read/write)"


def setup(ctx):
    return {}


def run(ctx, state):
    fs = FEATURE_SET
    events = ds.dataset(ctx["events_files"], format="parquet").to_table(columns=list(fs.event_columns)).to_pandas()
    queries = ds.dataset(ctx["queries_files"], format="parquet").to_table().to_pandas()
    out = kernel.compute(events, queries, fs, mode="as_of")
    del events, queries
    os.makedirs(ctx["out_dir"], exist_ok=True)
    pq.write_table(
        pa.Table.from_pandas(out[list(OUTPUT_COLUMNS)], preserve_index=False),
        os.path.join(ctx["out_dir"], "part-00000.parquet"),
    )
    return {"rows": len(out), "config": "1 process, pandas/numpy kernel"}


def teardown(state):
    pass
