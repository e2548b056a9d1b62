"""One module per benchmark variant, each run in a fresh subprocess by ``bench.child``.

A variant module defines ``KIND`` (``"kernel"``, ``"engine"`` or ``"native"``),
``DESCRIPTION``, and ``setup(ctx) -> state`` (untimed: cluster or session start),
``run(ctx, state) -> dict`` (timed: from reading the input Parquet to writing the
result Parquet under ``ctx["out_dir"]``; returns facts for the report, e.g. the
configuration) and ``teardown(state)``. Several variant names may share a module
with different options (``dask`` and ``dask_knobs``).
"""

from __future__ import annotations

import importlib

#: variant name -> (module, options); order = run order (the kernel first: it is the reference).
VARIANTS: dict[str, tuple[str, dict]] = {
    "kernel": ("bench.variants.kernel_local", {}),
    "dask": ("bench.variants.dask_engine", {"knobs": {}}),
    "dask_knobs": ("bench.variants.dask_engine", {"knobs": None}),  # knobs from --dask-knobs
    "spark": ("bench.variants.spark_engine", {"knobs": {}}),
    "spark_knobs": ("bench.variants.spark_engine", {"knobs": None}),  # knobs from --spark-knobs
    "duckdb_window": ("bench.variants.duckdb_window", {}),
    "duckdb_asof": ("bench.variants.duckdb_asof", {}),
    "polars_asof": ("bench.variants.polars_asof", {}),
    "polars_rolling": ("bench.variants.polars_rolling", {}),
    "spark_sql": ("bench.variants.spark_sql", {}),
    # --big only: the engine defaults with a 2 GiB worker memory limit.
    "dask_2GiB": ("bench.variants.dask_engine", {"knobs": {"dask_memory_limit": "2GiB"}}),
}
#: Output checked bit for bit (same kernel); the others with a tolerance.
EXACT = ("kernel", "dask", "dask_knobs", "dask_2GiB", "spark", "spark_knobs")
#: What ``--sizes`` runs by default (``dask_2GiB`` is the ``--big`` run's).
DEFAULT = (
    "kernel",
    "dask",
    "dask_knobs",
    "spark",
    "spark_knobs",
    "duckdb_window",
    "duckdb_asof",
    "polars_asof",
    "polars_rolling",
    "spark_sql",
)
#: The peers a user would pick instead of Lockstep on one machine (the "fastest native peer").
LOCAL_NATIVE = ("duckdb_window", "duckdb_asof", "polars_asof", "polars_rolling")


def module(name: str):
    return importlib.import_module(VARIANTS[name][0])
