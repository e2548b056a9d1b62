"""The same full-year training set in DuckDB SQL, as a cross-check and a yardstick for the engines.

Timestamps are int64 microseconds (UTC). An event counts for a query at ``t`` and window ``w`` when
``t - w <= event_ts < t`` and, ``known_at`` (every flights set trains ``known_at``), ``ingested_at < t``;
an aggregate over no values is the feature's declared default (the kernel's rules, DESIGN §1).

* ``origin_congestion_v1`` (counts, sums, means over 1 h / 3 h / 24 h of ~900 departures a day per
  airport): **ASOF joins** on per-airport running sums — the sum over ``[t - w, t)`` is the running
  sum at the last event before the upper bound minus the one before ``t - w``. ``known_at`` enters
  as the upper bound ``t - L`` where ``L`` is the source's reporting latency, which must be one
  constant (checked: ``ingested_at - event_ts`` has one value); differencing running sums rounds
  differently from the kernel's per-window sums, hence the tolerance of the check.
* ``plane_recent_v1`` and ``origin_weather_v1`` (max/min and days-since-last, which running sums
  cannot give): a range join bucketed by the longest window (each query meets the events of its
  key in its own and the previous bucket), conditional aggregates per window.
"""

from __future__ import annotations

import duckdb
import pandas as pd

from features.model import Model
from features.spec import FeatureSet

US_PER_DAY = 86_400_000_000
RUNNING = ("count", "sum", "mean")


def _us(days: float) -> int:
    return int(round(days * US_PER_DAY))


def _events_sql(cfg, fs: FeatureSet) -> str:
    table = cfg.lake().table(fs.source.table)
    files = table.files(table.first_ds(), table.last_ds())
    cols = sorted(set(fs.event_columns) - {"event_ts", "ingested_at"})
    listed = ", ".join(f"'{f}'" for f in files)
    return (
        f"SELECT {', '.join(cols)}, epoch_us(event_ts) AS t, epoch_us(ingested_at) AS ing FROM read_parquet([{listed}])"
    )


def _default(expr: str, default) -> str:
    return expr if default is None else f"coalesce({expr}, {float(default)!r})"


def _range_sql(fs: FeatureSet, key: str, events: str) -> str:
    bucket = max(_us(f.window_days) for f in fs.features)
    aggs = []
    for f in fs.features:
        cond = f"e.t >= q.t - {_us(f.window_days)}"
        if f.agg == "count":
            expr = f"count(e.t) FILTER (WHERE {cond})"
        elif f.agg in ("sum", "mean", "max", "min"):
            how = {"mean": "avg"}.get(f.agg, f.agg)
            expr = f"{how}(e.{f.column}) FILTER (WHERE {cond})"
        elif f.agg == "days_since_last":
            expr = f"(q.t - max(e.t) FILTER (WHERE {cond})) / {float(US_PER_DAY)!r}"
        else:
            raise ValueError(f"{fs.name}.{f.name}: no SQL for aggregation {f.agg!r}")
        aggs.append(f"{_default(expr, f.default)} AS {f.name}")
    return f"""
        WITH ev AS (SELECT *, t // {bucket} AS b FROM ({events})),
        qx AS (SELECT qid, {key} AS k, t, unnest([t // {bucket}, t // {bucket} - 1]) AS b FROM q)
        SELECT q.qid, {", ".join(aggs)}
        FROM qx q LEFT JOIN ev e
          ON e.{fs.entity} = q.k AND e.b = q.b AND e.t < q.t AND e.ing < q.t
             AND e.t >= q.t - {bucket}
        GROUP BY q.qid, q.t"""


def _asof_sql(con, fs: FeatureSet, key: str, events: str) -> str:
    lat = con.execute(f"SELECT DISTINCT ing - t FROM ({events})").fetchall()
    if len(lat) != 1 or lat[0][0] <= 0:
        raise ValueError(f"{fs.name}: ingested_at - event_ts is not one positive constant ({lat[:5]})")
    latency = lat[0][0]
    columns = sorted({f.column for f in fs.features if f.agg != "count"})
    for f in fs.features:
        if f.agg not in RUNNING:
            raise ValueError(f"{fs.name}.{f.name}: running sums cannot give {f.agg!r}")
    sums = ["count(*) AS n"] + [f"sum({c}) AS s_{c}, count({c}) AS n_{c}" for c in columns]
    run = ["n"] + [x for c in columns for x in (f"s_{c}", f"n_{c}")]
    cum = ", ".join(f"sum({c}) OVER w AS {c}" for c in run)
    windows = sorted({_us(f.window_days) for f in fs.features})
    bounds = ["q.t - " + str(latency) + " AS u"] + [f"q.t - {w} AS l{w}" for w in windows]
    joins = [f"ASOF LEFT JOIN cum cu ON cu.{fs.entity} = q.k AND qb.u > cu.t"]
    joins += [f"ASOF LEFT JOIN cum c{w} ON c{w}.{fs.entity} = q.k AND qb.l{w} > c{w}.t" for w in windows]

    def diff(col: str, w: int) -> str:
        return f"(coalesce(cu.{col}, 0) - coalesce(c{w}.{col}, 0))"

    aggs = []
    for f in fs.features:
        w = _us(f.window_days)
        if f.agg == "count":
            expr = diff("n", w)
        elif f.agg == "sum":
            expr = f"CASE WHEN {diff('n_' + f.column, w)} > 0 THEN {diff('s_' + f.column, w)} END"
        else:
            expr = f"CASE WHEN {diff('n_' + f.column, w)} > 0 THEN {diff('s_' + f.column, w)} / {diff('n_' + f.column, w)} END"
        aggs.append(f"{_default(expr, f.default)} AS {f.name}")
    return f"""
        WITH grouped AS (SELECT {fs.entity}, t, {", ".join(sums)} FROM ({events}) GROUP BY {fs.entity}, t),
        cum AS (SELECT {fs.entity}, t, {cum} FROM grouped
                WINDOW w AS (PARTITION BY {fs.entity} ORDER BY t ROWS UNBOUNDED PRECEDING)),
        qb AS (SELECT q.qid, q.{key} AS k, {", ".join(bounds)} FROM q)
        SELECT qb.qid, {", ".join(aggs)}
        FROM qb {" ".join(j.replace("q.k", "qb.k") for j in joins)}"""


def build(cfg, model: Model, queries: pd.DataFrame, threads: int = 2) -> pd.DataFrame:
    """The model's training rows for ``queries`` (its id columns, ``as_of``, pass-through columns, then
    ``model.feature_names``), in query order."""
    con = duckdb.connect()
    con.execute(f"SET threads={threads}")
    q = queries.reset_index(drop=True)
    q = q.assign(qid=range(len(q)), t=q["as_of"].astype("datetime64[us, UTC]").astype("int64"))
    con.register("q", q)
    out = queries.reset_index(drop=True).copy()
    for join in model.joins:
        fs = join.feature_set
        events = _events_sql(cfg, fs)
        if all(f.agg in RUNNING for f in fs.features):
            sql = _asof_sql(con, fs, join.key_name, events)
        else:
            sql = _range_sql(fs, join.key_name, events)
        part = con.execute(sql).df().sort_values("qid")
        if len(part) != len(q):
            raise RuntimeError(f"{fs.name}: {len(part)} rows for {len(q)} queries")
        for name in fs.feature_names:
            out[name] = part[name].to_numpy(dtype="float64")
    con.close()
    return out
