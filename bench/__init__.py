"""Lockstep benchmarks: ``python -m bench`` (see bench/README.md).

The point-in-time build benchmark runs every variant (the kernel in one process,
the Dask and Spark engines, and native DuckDB/Polars/Spark SQL formulations) in a
fresh subprocess, checks each output against the kernel's and reports wall time,
peak RSS and ratios.
"""
