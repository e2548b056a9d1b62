"""``duckdb_asof``: DuckDB ASOF joins on per-entity prefix sums, plus a range join for distinct.

1. Events are collapsed to one row per (entity, event_ts) — ``count(*)``,
   ``sum(amount)``, ``count(amount)`` — so an ASOF match is unambiguous when
   events tie, then turned into running totals per entity.
2. For query ``(e, t)``, ``ASOF LEFT JOIN ... ON ts < t`` gives the totals over
   ``event_ts < t``; for each window ``ASOF LEFT JOIN ... ON ts < t - w`` the totals
   over ``event_ts < t - w``; the difference covers ``t - w <= event_ts < t``. The
   first match's ``ts`` is also the last event before ``t`` (days since last, when
   it is ``>= t - w``). Differencing leaves ~1e-12 rounding (checked with a tolerance);
   a window without non-null amounts is set to exactly 0 / NULL.
3. Distinct categories: a range join of each query with its entity's events in
   ``[t - 30 days, t)``, ``count(DISTINCT category) FILTER (ts >= t - w)`` per window.
"""

from __future__ import annotations

import os

from bench.featureset import US_PER_DAY, WINDOWS_DAYS, names
from bench.variants._duck import connect, file_list, info

KIND = "native"
DESCRIPTION = "DuckDB ASOF joins on prefix sums + range join (count DISTINCT) for distinct categories"


def sql(events_files, queries_files, out_path) -> str:
    widest = max(WINDOWS_DAYS)
    joins, cols, distinct = [], [], []
    for w in WINDOWS_DAYS:
        n = names(w)
        joins.append(
            f"ASOF LEFT JOIN cum AS lo{w} ON q.customer_id = lo{w}.customer_id AND q.t - INTERVAL {w} DAY > lo{w}.ts"
        )
        c = f"(coalesce(hi.cc, 0) - coalesce(lo{w}.cc, 0))"
        nn = f"(coalesce(hi.cn, 0) - coalesce(lo{w}.cn, 0))"
        s = f"(coalesce(hi.cs, 0.0) - coalesce(lo{w}.cs, 0.0))"
        cols += [
            f"{c} AS {n['count']}",
            f"CASE WHEN {nn} > 0 THEN {s} ELSE 0.0 END AS {n['sum']}",
            f"CASE WHEN {nn} > 0 THEN {s} / {nn} END AS {n['mean']}",
            (
                f"CASE WHEN hi.ts >= q.t - INTERVAL {w} DAY "
                f"THEN (epoch_us(q.t) - epoch_us(hi.ts))::DOUBLE / {US_PER_DAY} END AS {n['days_since_last']}"
            ),
            f"coalesce(d.{n['distinct_count']}, 0) AS {n['distinct_count']}",
        ]
        distinct.append(
            f"count(DISTINCT e.category) FILTER (WHERE e.ts >= q.t - INTERVAL {w} DAY) AS {n['distinct_count']}"
        )
    return f"""
COPY (
  WITH ev AS (
    SELECT customer_id, event_ts::TIMESTAMP AS ts, amount, category FROM read_parquet({file_list(events_files)})
  ),
  q AS (
    SELECT query_id, customer_id, as_of, as_of::TIMESTAMP AS t FROM read_parquet({file_list(queries_files)})
  ),
  per_ts AS (
    SELECT customer_id, ts, count(*) AS c, sum(amount) AS s, count(amount) AS n FROM ev GROUP BY ALL
  ),
  cum AS (
    SELECT customer_id, ts,
      sum(c) OVER run AS cc, sum(coalesce(s, 0.0)) OVER run AS cs, sum(n) OVER run AS cn
    FROM per_ts
    WINDOW run AS (PARTITION BY customer_id ORDER BY ts ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
  ),
  d AS (
    SELECT q.query_id, {", ".join(distinct)}
    FROM q JOIN ev e
      ON e.customer_id = q.customer_id AND e.ts >= q.t - INTERVAL {widest} DAY AND e.ts < q.t
    GROUP BY q.query_id
  )
  SELECT q.query_id, q.customer_id, q.as_of, {", ".join(cols)}
  FROM q
  ASOF LEFT JOIN cum AS hi ON q.customer_id = hi.customer_id AND q.t > hi.ts
  {" ".join(joins)}
  LEFT JOIN d ON d.query_id = q.query_id
) TO '{out_path}' (FORMAT parquet)
"""


def setup(ctx):
    return {"con": connect(ctx)}


def run(ctx, state):
    os.makedirs(ctx["out_dir"], exist_ok=True)
    con = state["con"]
    con.execute(sql(ctx["events_files"], ctx["queries_files"], os.path.join(ctx["out_dir"], "part-00000.parquet")))
    return {"config": info(con)}


def teardown(state):
    state["con"].close()
