"""Shared DuckDB setup for the DuckDB peers."""

from __future__ import annotations

import os


def connect(ctx):
    import duckdb

    con = duckdb.connect()
    # Naive TIMESTAMPs below are UTC wall clock; with another session zone, casting the
    # Parquet TIMESTAMPTZ columns would shift them (and INTERVAL days would follow DST).
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET threads = 2")
    con.execute("SET preserve_insertion_order = false")
    spill = os.path.join(ctx["scratch"], "duckdb_tmp")
    os.makedirs(spill, exist_ok=True)
    con.execute(f"SET temp_directory = '{spill}'")
    return con


def file_list(paths) -> str:
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


def info(con) -> str:
    threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
    mem = con.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    return f"duckdb threads={threads}, memory_limit={mem}"
