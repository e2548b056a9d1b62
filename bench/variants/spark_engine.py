"""``spark`` / ``spark_knobs``: ``jobs.engines.run`` with ``cfg.engine="spark"`` on ``local[2]``.

The session is the engine's own (``spark_engine.get_spark``, its ``SPARK_CONF``),
started in ``setup`` so the JVM start is reported separately. ``spark`` uses the
Config defaults, ``spark_knobs`` the ``--spark-knobs`` overrides (e.g. buckets).
"""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq

from bench.featureset import FEATURE_SET, OUTPUT_COLUMNS

KIND = "engine"
DESCRIPTION = "jobs.engines.run(engine='spark'): cogroup + applyInPandas of the kernel over hash buckets"


def setup(ctx):
    from jobs.config import Config
    from jobs.engines.spark_engine import get_spark

    knobs = dict(ctx["options"].get("knobs") or {})
    cfg = Config(lake_root=ctx["scratch"], engine="spark", **knobs)
    spark = get_spark(cfg.spark_master)
    return {"cfg": cfg, "knobs": knobs, "spark": spark}


def run(ctx, state):
    from jobs import engines

    cfg = state["cfg"]
    os.makedirs(ctx["out_dir"], exist_ok=True)
    rows = files = 0
    for frame in engines.run(
        cfg, FEATURE_SET, ctx["events_files"], ctx["queries_files"], "as_of", spark=state["spark"]
    ):
        if len(frame):
            pq.write_table(
                pa.Table.from_pandas(frame[list(OUTPUT_COLUMNS)], preserve_index=False),
                os.path.join(ctx["out_dir"], f"part-{files:05d}.parquet"),
            )
            rows += len(frame)
            files += 1
    driver_mem = state["spark"].sparkContext.getConf().get("spark.driver.memory", "?")
    return {
        "rows": rows,
        "config": (
            f"{cfg.spark_master}, buckets={cfg.buckets}, driver memory {driver_mem}"
            + (f" (knobs {state['knobs']})" if state["knobs"] else " (Config defaults)")
        ),
    }


def teardown(state):
    state["spark"].stop()
