"""``python -m bench.incremental``: would the snapshot of day D, updated from day D-1's values with the
events that enter and leave each window, be bit-identical to the kernel's? Measured per aggregate kind.

    python -m bench.incremental --lake bench/results/backfill/data/e2000000_n100000_d60 --ds 2024-02-29

Reads the raw partitions of ``--feature-set``'s source through D (the lake as ``bench.backfill`` generates
it; duplicates keep their earliest copy, which for generated data is the kernel's rule), computes the
kernel's snapshots at the cut-offs of D-1 and D, and for every entity queried at D derives, per feature:

* the rows entering its window between the cut-offs (visible at D, not at D-1) and leaving it (event time
  slid out of the window);
* ``count``: D-1's count + entering - leaving;
* ``sum`` / ``mean``: D-1's sum, then each entering amount added in ``(event_ts, event_id)`` order, each
  leaving one subtracted (a mean: that sum, from D-1's value of the set's sum feature of the same column
  and window, over the count of non-null values);
* ``min`` / ``max``: min/max of D-1's value and the entering values, where no row left the window (with a
  row leaving, the previous extreme may be the one that left: the window must be re-read);
* ``days_since_last`` / ``days_since_first``: D-1's value + 1 where the entity's last/first event did not
  change;

and counts the entities whose update differs from the kernel's value in any bit (NaN equals NaN). It also
counts the entities whose window rows did not change at all (nothing entered or left): the kernel's value
is then D-1's for every aggregate but the ``days_since_*`` ones, which depend on the cut-off itself.
Prints one line per feature and writes ``<out>/incremental.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os

import numpy as np
import pandas as pd

US_PER_DAY = 86_400_000_000


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.incremental", description=__doc__.split("\n\n")[0])
    p.add_argument("--lake", required=True, help="a lake with the source's raw partitions (bench.backfill's data)")
    p.add_argument("--ds", required=True, help="day D: compared with D-1")
    p.add_argument("--feature-set", default="customer_activity_v1")
    p.add_argument("--out", default="bench/results/incremental")
    return p.parse_args(argv)


def _events(cfg, fs, ds: str) -> pd.DataFrame:
    raw = cfg.lake().table(fs.source.table)
    ev = raw.read(raw.first_ds(), ds, columns=list(fs.event_columns))
    ev = ev.sort_values([fs.event_id, fs.ingested_at], kind="stable").drop_duplicates(fs.event_id, keep="first")
    return ev.reset_index(drop=True)


def _us(s: pd.Series) -> np.ndarray:
    from features.kernel import to_us

    return to_us(s)


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a.view(np.int64) == b.view(np.int64)) | (np.isnan(a) & np.isnan(b))


def _sum_state(fs, f, prev: pd.DataFrame):
    """D-1's sum of a mean's column and window (the set's own sum feature of them), None if it has none."""
    for g in fs.features:
        if g.agg == "sum" and g.column == f.column and g.window_us == f.window_us:
            return prev[g.name].to_numpy()
    return None


def measure(cfg, fs, ds: str) -> list[dict]:
    from features import kernel
    from jobs.snapshots import cutoff

    prev_ds = (dt.date.fromisoformat(ds) - dt.timedelta(days=1)).isoformat()
    t_prev, t_cur = (int(_us(pd.Series([cutoff(d)]))[0]) for d in (prev_ds, ds))
    ev = _events(cfg, fs, ds)
    cur = kernel.compute(ev, kernel.snapshot_queries(ev, fs, cutoff(ds)), fs)
    prev = kernel.compute(ev, kernel.snapshot_queries(ev, fs, cutoff(prev_ds)), fs)
    ent = cur[fs.entity].to_numpy()
    prev = prev.set_index(fs.entity).reindex(ent)  # entities new at D: NaN rows (no D-1 state)
    known = prev.index.isin(kernel.snapshot_queries(ev, fs, cutoff(prev_ds))[fs.entity])
    ts, ing = _us(ev[fs.timestamp]), _us(ev[fs.ingested_at])
    vis = np.maximum(ts, ing)
    code = pd.Index(ent).get_indexer(ev[fs.entity])
    order = np.lexsort((ev[fs.event_id].to_numpy(), ts, code))  # (entity, event_ts, event_id)
    n = len(ent)
    rows = []
    for f in fs.features:
        if f.agg == "ratio":
            continue
        w = f.window_us
        enter = (code >= 0) & (vis >= t_prev) & (vis < t_cur) & (True if w is None else ts >= t_cur - w)
        leave = (
            np.zeros(len(ts), bool)
            if w is None
            else (code >= 0) & (vis < t_prev) & (ts >= t_prev - w) & (ts < t_cur - w)
        )
        n_enter = np.bincount(code[enter], minlength=n)
        n_leave = np.bincount(code[leave], minlength=n)
        touched = (n_enter + n_leave) > 0
        want = cur[f.name].to_numpy()
        old = prev[f.name].to_numpy()
        kind, judged, differ = f.agg, known, None
        if f.agg == "count":
            got = np.nan_to_num(old) + n_enter - n_leave
            differ = got != want
        elif f.agg in ("sum", "mean"):
            v = ev[f.column].to_numpy(dtype=np.float64, na_value=np.nan)
            nn = ~np.isnan(v)
            in_win_prev = (code >= 0) & (vis < t_prev) & (ts < t_prev) & (True if w is None else ts >= t_prev - w)
            cnt_prev = np.bincount(code[in_win_prev & nn], minlength=n)
            cnt = cnt_prev + np.bincount(code[enter & nn], minlength=n) - np.bincount(code[leave & nn], minlength=n)
            state = old if f.agg == "sum" else _sum_state(fs, f, prev)  # a mean carries its sum as state
            if state is None:
                continue
            total = np.where(cnt_prev > 0, np.nan_to_num(state), 0.0)
            for sel, op in ((enter & nn, np.add), (leave & nn, np.subtract)):
                idx = order[sel[order]]  # in (entity, event_ts, event_id) order
                op.at(total, code[idx], v[idx])
            got = total if f.agg == "sum" else np.divide(total, cnt, out=np.full(n, np.nan), where=cnt > 0)
            got = np.where(cnt > 0, got, np.nan if f.default is None else f.default)
            differ = ~_same(got, want)
            judged = known & touched
        elif f.agg in ("min", "max"):
            v = ev[f.column].to_numpy(dtype=np.float64, na_value=np.nan)
            ufunc = np.fmin if f.agg == "min" else np.fmax
            new = np.full(n, np.nan)
            sel = enter & ~np.isnan(v)
            ufunc.at(new, code[sel], v[sel])
            got = ufunc(old, new)
            judged = known & touched & (n_leave == 0)
            differ = ~_same(got, want)
        elif f.agg in ("days_since_last", "days_since_first"):
            got = old + 1.0
            judged = known & ~touched if f.agg == "days_since_last" else known
            differ = ~_same(got, want)
        elif f.agg == "distinct_count":
            judged = np.zeros(n, bool)  # needs the set of values as state, not the count: not a value update
        rows.append(
            {
                "feature": f.name,
                "kind": kind,
                "window_days": None if w is None else w / US_PER_DAY,
                "entities": n,
                "unchanged_rows": int((known & ~touched).sum()),
                "judged": int(judged.sum()),
                "differ": 0 if differ is None else int((differ & judged).sum()),
                "max_abs_diff": 0.0
                if differ is None or not (differ & judged).any()
                else float(np.nanmax(np.abs(np.asarray(got, float) - want)[differ & judged])),
            }
        )
    return rows


def main(argv=None) -> int:
    from jobs.config import Config

    args = parse_args(argv)
    cfg = Config(lake_root=os.path.abspath(args.lake))
    fs = cfg.repo().feature_set(args.feature_set)
    rows = measure(cfg, fs, args.ds)
    load = os.getloadavg()
    table = (
        f"{args.feature_set}, D = {args.ds} vs D-1, lake {args.lake}; load {load[0]:.2f}\n\n"
        "| feature | kind | window (days) | entities at D | rows unchanged since D-1 | updates judged | "
        "differ from the kernel | max abs diff |\n|---|---|---|---|---|---|---|---|\n"
    )
    for r in rows:
        table += (
            f"| {r['feature']} | {r['kind']} | {r['window_days'] or 'lifetime'} | {r['entities']:,} | "
            f"{r['unchanged_rows']:,} | {r['judged']:,} | {r['differ']:,} | {r['max_abs_diff']:.3g} |\n"
        )
    print(table)
    os.makedirs(args.out, exist_ok=True)
    with open(f"{args.out}/incremental.md", "w") as f:
        f.write(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
