"""``duckdb_window``: DuckDB SQL window functions over the union of events and queries.

Each query row joins the event stream at its ``as_of``; every aggregate is a window
``PARTITION BY customer_id ORDER BY ts RANGE BETWEEN INTERVAL w PRECEDING AND
INTERVAL 1 MICROSECOND PRECEDING``, i.e. ``t - w <= event_ts <= t - 1us`` (timestamps
are microseconds, so that is exactly ``t - w <= event_ts < t``: an event at the
query's own instant is excluded, one exactly ``w`` earlier included). Query rows carry
NULLs, which every aggregate ignores (``count(is_event)``, not ``count(*)``).
Distinct categories: ``count(DISTINCT category) OVER (... RANGE ...)``, which DuckDB
evaluates exactly. Empty windows: count/distinct 0, sum 0, mean and recency NULL.
"""

from __future__ import annotations

import os

from bench.featureset import US_PER_DAY, WINDOWS_DAYS, names
from bench.variants._duck import connect, file_list, info

KIND = "native"
DESCRIPTION = "DuckDB window functions, RANGE BETWEEN INTERVAL w PRECEDING AND INTERVAL 1 MICROSECOND PRECEDING"


def sql(events_files, queries_files, out_path) -> str:
    windows = ",\n      ".join(
        f"w{w} AS (PARTITION BY customer_id ORDER BY ts "
        f"RANGE BETWEEN INTERVAL {w} DAY PRECEDING AND INTERVAL 1 MICROSECOND PRECEDING)"
        for w in WINDOWS_DAYS
    )
    aggs, outs = [], []
    for w in WINDOWS_DAYS:
        n = names(w)
        aggs += [
            f"count(is_event) OVER w{w} AS {n['count']}",
            f"coalesce(sum(amount) OVER w{w}, 0.0) AS {n['sum']}",
            f"avg(amount) OVER w{w} AS {n['mean']}",
            f"max(event_ts) OVER w{w} AS last_{w}d",
            f"count(DISTINCT category) OVER w{w} AS {n['distinct_count']}",
        ]
        outs += [
            n["count"],
            n["sum"],
            n["mean"],
            f"(epoch_us(ts) - epoch_us(last_{w}d))::DOUBLE / {US_PER_DAY} AS {n['days_since_last']}",
            n["distinct_count"],
        ]
    return f"""
COPY (
  WITH stream AS (
    SELECT customer_id, event_ts::TIMESTAMP AS ts, event_ts::TIMESTAMP AS event_ts, 1 AS is_event,
           amount, category, NULL::BIGINT AS query_id, NULL::TIMESTAMPTZ AS as_of
      FROM read_parquet({file_list(events_files)})
    UNION ALL
    SELECT customer_id, as_of::TIMESTAMP, NULL, NULL, NULL, NULL, query_id, as_of
      FROM read_parquet({file_list(queries_files)})
  ),
  windowed AS (
    SELECT query_id, customer_id, as_of, ts,
      {", ".join(aggs)}
    FROM stream
    WINDOW {windows}
    QUALIFY query_id IS NOT NULL
  )
  SELECT query_id, customer_id, as_of, {", ".join(outs)} FROM windowed
) TO '{out_path}' (FORMAT parquet)
"""


def setup(ctx):
    return {"con": connect(ctx)}


def run(ctx, state):
    os.makedirs(ctx["out_dir"], exist_ok=True)
    con = state["con"]
    out = os.path.join(ctx["out_dir"], "part-00000.parquet")
    con.execute(sql(ctx["events_files"], ctx["queries_files"], out))
    return {"config": info(con)}


def teardown(state):
    state["con"].close()
