"""``polars_asof``: Polars ``join_asof`` on per-entity prefix sums.

Timestamps become int64 microseconds (no time-zone arithmetic). Events are
collapsed to one row per (entity, ts) and turned into running totals per entity;
``join_asof(strategy="backward", allow_exact_matches=False)`` at ``t`` gives the
totals over ``event_ts < t``, at ``t - w`` those over ``event_ts < t - w``; their
difference covers ``t - w <= event_ts < t`` (rounding ~1e-12, checked with a tolerance).
The match at ``t`` is also the last event before ``t`` (days since last).
Distinct categories: each query is expanded to the categories its entity ever
had, ``join_asof`` by (entity, category) finds each category's last occurrence
before ``t``, and a category counts for window ``w`` when that is ``>= t - w`` — exact,
and ~8 rows per query instead of a range join's ~events-per-window.
"""

from __future__ import annotations

import os
import warnings

from bench.featureset import US_PER_DAY, WINDOWS_DAYS, names

KIND = "native"
DESCRIPTION = "Polars join_asof on prefix sums + join_asof by (entity, category) on last occurrence"
E = "customer_id"


def build(events_files, queries_files):
    import polars as pl

    ev = pl.scan_parquet(events_files).select(
        pl.col(E), pl.col("event_ts").dt.epoch("us").alias("ts"), pl.col("amount"), pl.col("category")
    )
    q = (
        pl.scan_parquet(queries_files)
        .select("query_id", E, "as_of", pl.col("as_of").dt.epoch("us").alias("t"))
        .sort("t")
    )
    cum = (
        ev.group_by(E, "ts")
        .agg(pl.len().alias("c"), pl.col("amount").sum().alias("s"), pl.col("amount").count().alias("n"))
        .sort(E, "ts")
        .select(
            E,
            "ts",
            pl.col("c").cum_sum().over(E).alias("cc"),
            pl.col("s").cum_sum().over(E).alias("cs"),
            pl.col("n").cum_sum().over(E).alias("cn"),
        )
        .sort("ts")
        .collect()
    )

    def asof(left, on: str, suffix: str):
        right = cum.lazy().rename({c: c + suffix for c in ("ts", "cc", "cs", "cn")})
        return left.join_asof(
            right,
            left_on=on,
            right_on="ts" + suffix,
            by=E,
            strategy="backward",
            allow_exact_matches=False,
            check_sortedness=False,
        )

    res = asof(q, "t", "_hi")
    feats = []
    for w in WINDOWS_DAYS:
        n = names(w)
        res = asof(res.with_columns((pl.col("t") - w * US_PER_DAY).alias(f"t{w}")), f"t{w}", f"_lo{w}")
        c = pl.col("cc_hi").fill_null(0) - pl.col(f"cc_lo{w}").fill_null(0)
        nn = pl.col("cn_hi").fill_null(0) - pl.col(f"cn_lo{w}").fill_null(0)
        s = pl.col("cs_hi").fill_null(0.0) - pl.col(f"cs_lo{w}").fill_null(0.0)
        feats += [
            c.cast(pl.Int64).alias(n["count"]),
            pl.when(nn > 0).then(s).otherwise(0.0).alias(n["sum"]),
            pl.when(nn > 0).then(s / nn).otherwise(None).alias(n["mean"]),
            pl.when(pl.col("ts_hi") >= pl.col("t") - w * US_PER_DAY)
            .then((pl.col("t") - pl.col("ts_hi")).cast(pl.Float64) / US_PER_DAY)
            .alias(n["days_since_last"]),
        ]
    res = res.select("query_id", E, "as_of", "t", *feats)

    # Distinct categories: last occurrence of each of the entity's categories before t.
    last = ev.filter(pl.col("category").is_not_null()).select(E, "category", "ts").unique().sort("ts").collect()
    cats = last.lazy().select(E, "category").unique()
    qc = q.select("query_id", E, "t").join(cats, on=E).sort("t")
    qc = qc.join_asof(
        last.lazy().rename({"ts": "last_ts"}),
        left_on="t",
        right_on="last_ts",
        by=[E, "category"],
        strategy="backward",
        allow_exact_matches=False,
        check_sortedness=False,
    )
    distinct = qc.group_by("query_id").agg(
        *[
            (pl.col("last_ts") >= pl.col("t") - w * US_PER_DAY).sum().cast(pl.Int64).alias(names(w)["distinct_count"])
            for w in WINDOWS_DAYS
        ]
    )
    out = res.join(distinct, on="query_id", how="left").with_columns(
        *[pl.col(names(w)["distinct_count"]).fill_null(0) for w in WINDOWS_DAYS]
    )
    order = []
    for w in WINDOWS_DAYS:
        order += list(names(w).values())
    return out.select("query_id", E, "as_of", *order)


def setup(ctx):
    return {}


def run(ctx, state):
    import polars as pl

    os.makedirs(ctx["out_dir"], exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build(ctx["events_files"], ctx["queries_files"]).collect().write_parquet(
            os.path.join(ctx["out_dir"], "part-00000.parquet")
        )
    return {"config": f"polars {pl.__version__}, {pl.thread_pool_size()} threads"}


def teardown(state):
    pass
