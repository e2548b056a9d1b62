"""One variant of the full-year build in this (fresh) process: ``python -m bench.flights.child <ctx.json>``.

``ctx``: ``variant`` (``local``, ``dask``, ``spark`` or ``duckdb``), ``lake``, ``queries`` (a Parquet file
of every label row), ``out`` (the Parquet file written), ``result`` (JSON: ``setup_s``, ``wall_s``,
``rows``, ``vmhwm_self``). The engines run ``jobs.engines.join.join_features`` over all the rows at once
(one pass per feature set); ``duckdb`` runs :mod:`bench.flights.duck`.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

MODEL = "dep_delay_15"


def _setup(variant: str):
    if variant == "dask":
        from dask.distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
        return {"client": Client(cluster)}, lambda: cluster.close()
    if variant == "spark":
        from jobs.engines.spark_engine import get_spark

        spark = get_spark("local[2]")
        return {"spark": spark}, spark.stop
    return {}, lambda: None


def run(ctx: dict) -> dict:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs.config import Config

    variant = ctx["variant"]
    t0 = time.monotonic()
    options, teardown = _setup(variant)
    t1 = time.monotonic()
    try:
        queries = pd.read_parquet(ctx["queries"])
        if variant == "duckdb":
            from bench.flights.duck import build

            cfg = Config(lake_root=ctx["lake"])
            frame = build(cfg, cfg.repo().model(MODEL), queries)
            frames = [frame]
        else:
            from jobs.engines.join import join_features

            cfg = Config(lake_root=ctx["lake"], engine=variant)
            m = cfg.repo().model(MODEL)
            frames = join_features(
                cfg, m, queries, modes={fs.name: fs.training_mode for fs in m.feature_sets}, **options
            )
        writer, rows = None, 0
        for frame in frames:
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(ctx["out"], table.schema)
            writer.write_table(table.cast(writer.schema))
            rows += len(frame)
        if writer is not None:
            writer.close()
        t2 = time.monotonic()
    finally:
        teardown()
    return {"setup_s": t1 - t0, "wall_s": t2 - t1, "rows": rows}


def main(path: str) -> int:
    with open(path) as f:
        ctx = json.load(f)
    result = {"variant": ctx["variant"], "ok": False}
    try:
        result.update(run(ctx), ok=True)
    except BaseException as exc:  # noqa: BLE001 (reported to the parent, not raised)
        traceback.print_exc()
        result["error"] = f"{type(exc).__name__}: {exc}"[:2000]
    from bench.measure import hwm

    result["vmhwm_self"] = hwm(os.getpid())
    with open(ctx["result"], "w") as f:
        json.dump(result, f, indent=1)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
