"""``dask`` / ``dask_knobs``: ``jobs.engines.run`` with ``cfg.engine="dask"``.

The LocalCluster is the one the engine itself would create from the config
(``dask_workers`` x ``dask_threads_per_worker`` processes, ``dask_memory_limit``)
but is started in ``setup`` and handed over as ``client=`` so the cluster start is
reported separately from the timed run. ``dask`` uses the Config defaults,
``dask_knobs`` the ``--dask-knobs`` overrides. The yielded frames (one per bucket)
are written as they arrive, one Parquet file each.
"""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq

from bench.featureset import FEATURE_SET, OUTPUT_COLUMNS

KIND = "engine"
DESCRIPTION = "jobs.engines.run(engine='dask'): bucket inputs to files, one kernel task per bucket"


def config(ctx):
    from jobs.config import Config

    knobs = dict(ctx["options"].get("knobs") or {})
    return Config(lake_root=ctx["scratch"], engine="dask", **knobs), knobs


def setup(ctx):
    import logging

    from distributed import Client, LocalCluster

    from jobs.engines.dask_engine import WORKER_PRELOAD

    logging.getLogger("distributed").setLevel(logging.ERROR)
    cfg, knobs = config(ctx)
    # Exactly what jobs.engines.dask_engine._connect builds when no cluster is given.
    cluster = LocalCluster(
        n_workers=cfg.dask_workers,
        threads_per_worker=cfg.dask_threads_per_worker,
        memory_limit=cfg.dask_memory_limit,
        processes=True,
        dashboard_address=None,
        preload=[WORKER_PRELOAD],
    )
    client = Client(cluster)
    return {"cfg": cfg, "knobs": knobs, "cluster": cluster, "client": client}


def run(ctx, state):
    from jobs import engines

    cfg = state["cfg"]
    os.makedirs(ctx["out_dir"], exist_ok=True)
    rows = files = 0
    frames = engines.run(cfg, FEATURE_SET, ctx["events_files"], ctx["queries_files"], "as_of", client=state["client"])
    for frame in frames:
        if len(frame):
            pq.write_table(
                pa.Table.from_pandas(frame[list(OUTPUT_COLUMNS)], preserve_index=False),
                os.path.join(ctx["out_dir"], f"part-{files:05d}.parquet"),
            )
            rows += len(frame)
            files += 1
    return {
        "rows": rows,
        "config": (
            f"LocalCluster {cfg.dask_workers} worker(s) x {cfg.dask_threads_per_worker} thread(s), "
            f"processes, memory_limit={cfg.dask_memory_limit}, buckets={cfg.buckets}"
            + (f" (knobs {state['knobs']})" if state["knobs"] else " (Config defaults)")
        ),
    }


def teardown(state):
    state["client"].close()
    state["cluster"].close()
