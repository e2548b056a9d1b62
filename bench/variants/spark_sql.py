"""``spark_sql``: Spark SQL window functions over the union of events and queries.

Same session settings as the Spark engine (``jobs.engines.spark_engine.get_spark``:
``local[2]``, UTC session zone, 2 GiB driver). Timestamps become long microseconds
(``unix_micros``) and each window is ``PARTITION BY customer_id ORDER BY ts RANGE
BETWEEN w PRECEDING AND 1 PRECEDING`` = ``t - w <= event_ts < t``. Query rows carry
NULLs, which the aggregates ignore. Spark rejects ``count(DISTINCT ...) OVER``, so
distinct categories are ``size(collect_set(category) OVER ...)``.
"""

from __future__ import annotations

from bench.featureset import US_PER_DAY, WINDOWS_DAYS, names

KIND = "native"
DESCRIPTION = "Spark SQL window functions, RANGE BETWEEN w PRECEDING AND 1 PRECEDING on long microseconds"


def sql() -> str:
    windows = ",\n  ".join(
        f"w{w} AS (PARTITION BY customer_id ORDER BY ts RANGE BETWEEN {w * US_PER_DAY} PRECEDING AND 1 PRECEDING)"
        for w in WINDOWS_DAYS
    )
    aggs, outs = [], []
    for w in WINDOWS_DAYS:
        n = names(w)
        aggs += [
            f"count(is_event) OVER w{w} AS {n['count']}",
            f"coalesce(sum(amount) OVER w{w}, 0.0) AS {n['sum']}",
            f"avg(amount) OVER w{w} AS {n['mean']}",
            f"max(ev_ts) OVER w{w} AS last_{w}d",
            f"size(collect_set(category) OVER w{w}) AS {n['distinct_count']}",
        ]
        outs += [
            n["count"],
            n["sum"],
            n["mean"],
            f"CAST(ts - last_{w}d AS DOUBLE) / {US_PER_DAY} AS {n['days_since_last']}",
            f"CAST({n['distinct_count']} AS BIGINT) AS {n['distinct_count']}",
        ]
    return f"""
WITH stream AS (
  SELECT CAST(customer_id AS BIGINT) AS customer_id, unix_micros(event_ts) AS ts, unix_micros(event_ts) AS ev_ts,
         1 AS is_event, amount, category, CAST(NULL AS BIGINT) AS query_id, CAST(NULL AS TIMESTAMP) AS as_of
    FROM events
  UNION ALL
  SELECT CAST(customer_id AS BIGINT), unix_micros(as_of), NULL, NULL, NULL, NULL, query_id, as_of
    FROM queries
),
windowed AS (
  SELECT query_id, customer_id, as_of, ts, {", ".join(aggs)}
  FROM stream
  WINDOW {windows}
)
SELECT query_id, customer_id, as_of, {", ".join(outs)} FROM windowed WHERE query_id IS NOT NULL
"""


def setup(ctx):
    from jobs.engines.spark_engine import get_spark

    spark = get_spark("local[2]")
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    return {"spark": spark}


def run(ctx, state):
    spark = state["spark"]
    spark.read.parquet(*ctx["events_files"]).createOrReplaceTempView("events")
    spark.read.parquet(*ctx["queries_files"]).createOrReplaceTempView("queries")
    spark.sql(sql()).write.mode("overwrite").parquet(ctx["out_dir"])
    conf = spark.sparkContext.getConf()
    return {
        "config": (
            f"{spark.sparkContext.master}, driver memory {conf.get('spark.driver.memory', '?')}, "
            f"shuffle partitions {spark.conf.get('spark.sql.shuffle.partitions')}"
        )
    }


def teardown(state):
    state["spark"].stop()
