"""``polars_rolling``: Polars rolling windows over the union of events and queries.

Query rows are inserted into the event stream at their ``as_of`` (NULL source
values, ``is_event`` 0), the stream is sorted by (entity, ts), and every row gets
its window ``[t - w, t)`` — ``closed="left"`` with a ``w``-day period: the inclusive
lower and strict upper bound of the kernel. Then the query rows are kept.

Two formulations (``--polars-rolling`` picks; default ``by_over``):

* ``by_over``: ``rolling_sum_by`` / ``rolling_max_by`` ``.over(customer_id)`` for
  count, sum, non-null count, last event time; distinct categories as the number
  of categories whose indicator has a non-zero ``rolling_max_by`` (categories
  taken from the data);
* ``group_rolling``: ``DataFrame.rolling(index_column="ts", period=..., closed="left",
  group_by="customer_id").agg(sum, mean, max, drop_nulls().n_unique())``.

Rolling sums add and subtract as the window slides, hence ~1e-12 differences
(checked with a tolerance); a window without non-null amounts is set to exactly 0 / NULL.
"""

from __future__ import annotations

import os
import warnings

from bench.featureset import US_PER_DAY, WINDOWS_DAYS, names

KIND = "native"
DESCRIPTION = "Polars rolling windows (rolling_*_by over entity, or group_by rolling + n_unique)"
E = "customer_id"


def stream(events_files, queries_files):
    import polars as pl

    ev = pl.scan_parquet(events_files).select(
        pl.col(E),
        pl.col("event_ts").dt.replace_time_zone(None).alias("ts"),  # UTC wall clock: a day is 24 h
        pl.lit(1, pl.Int64).alias("is_event"),
        pl.col("amount"),
        pl.col("event_ts").dt.epoch("us").alias("ev_us"),
        pl.col("category"),
    )
    q = pl.scan_parquet(queries_files).select(
        pl.col(E),
        pl.col("as_of").dt.replace_time_zone(None).alias("ts"),
        pl.lit(0, pl.Int64).alias("is_event"),
        "query_id",
        "as_of",
    )
    return pl.concat([ev, q], how="diagonal_relaxed").sort(E, "ts")


def _finish(frame, per_window):
    """Feature columns from per-window (count, sum, nonnull, last_us, distinct) expressions."""
    import polars as pl

    t_us = pl.col("as_of").dt.epoch("us")
    cols = []
    for w in WINDOWS_DAYS:
        n = names(w)
        c, s, nn, last, d = per_window[w]
        cols += [
            c.cast(pl.Int64).alias(n["count"]),
            pl.when(nn > 0).then(s).otherwise(0.0).alias(n["sum"]),
            pl.when(nn > 0).then(s / nn).otherwise(None).alias(n["mean"]),
            ((t_us - last).cast(pl.Float64) / US_PER_DAY).alias(n["days_since_last"]),
            d.cast(pl.Int64).alias(n["distinct_count"]),
        ]
    return frame.select("query_id", E, "as_of", *cols)


def by_over(events_files, queries_files):
    import polars as pl

    cats = (
        pl.scan_parquet(events_files)
        .select(pl.col("category").drop_nulls().unique())
        .collect()
        .to_series()
        .sort()
        .to_list()
    )
    u = stream(events_files, queries_files).with_columns(
        pl.col("amount").fill_null(0.0).alias("amount0"),
        pl.col("amount").is_not_null().cast(pl.Int64).alias("nonnull"),
        *[(pl.col("category") == c).fill_null(False).cast(pl.Int8).alias(f"is_cat{i}") for i, c in enumerate(cats)],
    )
    exprs, per_window = [], {}
    for w in WINDOWS_DAYS:

        def roll(col, how="sum", w=w):
            e = pl.col(col)
            e = (
                e.rolling_sum_by("ts", f"{w}d", closed="left")
                if how == "sum"
                else e.rolling_max_by("ts", f"{w}d", closed="left")
            )
            return e.over(E)

        exprs += [
            roll("is_event").alias(f"c{w}"),
            roll("amount0").alias(f"s{w}"),
            roll("nonnull").alias(f"n{w}"),
            roll("ev_us", "max").alias(f"l{w}"),
            pl.sum_horizontal(*[(roll(f"is_cat{i}", "max") > 0).cast(pl.Int64) for i in range(len(cats))]).alias(
                f"d{w}"
            ),
        ]
        per_window[w] = (pl.col(f"c{w}"), pl.col(f"s{w}"), pl.col(f"n{w}"), pl.col(f"l{w}"), pl.col(f"d{w}"))
    u = u.with_columns(*exprs).filter(pl.col("query_id").is_not_null())
    return _finish(u, per_window)


def group_rolling(events_files, queries_files):
    import polars as pl

    u = stream(events_files, queries_files).collect()
    per_window, parts = {}, [u.select("query_id", E, "as_of")]
    for w in WINDOWS_DAYS:
        agg = u.rolling(index_column="ts", period=f"{w}d", closed="left", group_by=E).agg(
            pl.col("is_event").sum().alias(f"c{w}"),
            pl.col("amount").sum().alias(f"s{w}"),
            pl.col("amount").count().alias(f"n{w}"),
            pl.col("ev_us").max().alias(f"l{w}"),
            pl.col("category").drop_nulls().n_unique().alias(f"d{w}"),
        )
        # One output row per input row, in input order (the input is sorted by entity, ts).
        parts.append(agg.drop(E, "ts"))
        per_window[w] = (pl.col(f"c{w}"), pl.col(f"s{w}"), pl.col(f"n{w}"), pl.col(f"l{w}"), pl.col(f"d{w}"))
    u = pl.concat(parts, how="horizontal").filter(pl.col("query_id").is_not_null())
    return _finish(u.lazy(), per_window)


METHODS = {"by_over": by_over, "group_rolling": group_rolling}


def setup(ctx):
    return {}


def run(ctx, state):
    import polars as pl

    method = ctx["options"].get("method") or "by_over"
    os.makedirs(ctx["out_dir"], exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        METHODS[method](ctx["events_files"], ctx["queries_files"]).collect().write_parquet(
            os.path.join(ctx["out_dir"], "part-00000.parquet")
        )
    return {"config": f"polars {pl.__version__}, {pl.thread_pool_size()} threads, method={method}"}


def teardown(state):
    pass
