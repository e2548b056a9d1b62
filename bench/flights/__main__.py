"""``python -m bench.flights``: ``dep_delay_15`` on the full year of NYC 2013 departures, and the full-year
training-set build through every engine, in one run.

    python -m bench.flights            # the year: land, labels, build x4 engines, train, peers
    python -m bench.flights --quick    # January-March only (ranges Jan / Feb / Mar)

Steps: (1) land ``flight_schedule``, ``flights``, ``weather`` into ``<out>/lake`` (skipped when landed);
(2) labels of every cut-off day; (3) the build of ALL label rows x 3 feature sets as ONE
``join_features`` (not one per day: a day's build reads all history before it, so 363 days would
re-read the year 363 times) on ``local`` (the kernel), ``dask`` and ``spark``, and the same rows in
DuckDB (:mod:`bench.flights.duck`), each in its own process with wall time and peak RSS of its process
tree; Dask and Spark must equal the kernel bit for bit, DuckDB within ``TOLERANCE``; (4) the
kernel's rows published as the daily ``training_sets`` partitions through ``build_training_set``
(validation, lineage) with its join replaced by the day's slice of the one join (checked equal to
the real per-day join on ``CHECK_DAYS``); (5) ``train_model`` on the model's declared ranges with the
dask-ml baseline floor; (6) holdback AUC of the model vs the historical rate and the schedule-only
LightGBM (:mod:`bench.flights.peers`). Results: ``<out>/flights.md`` and ``<out>/flights.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

# allow_unvalidated=True: this bench's lake is landed or generated and never validated (validation is
# not what it measures, and would dominate the time); the outputs are marked as built from unvalidated input.

MODEL = "dep_delay_15"
VARIANTS = ("local", "dask", "spark", "duckdb")
TOLERANCE = 1e-9
#: The last mature label day of the declared spans (flight_schedule ends 2013-12-24: the labels of a day read
#: the timetable through day + 2).
LAST_LABEL_DAY = "2013-12-22"
CHECK_DAYS = ("2013-01-15", "2013-12-15")
QUICK = {
    "land": ("2013-01-01", "2013-04-09"),
    "labels": ("2013-01-01", "2013-03-31"),
    "ranges": (("2013-01-01", "2013-01-31"), ("2013-02-01", "2013-02-28"), ("2013-03-01", "2013-03-31")),
    "check": ("2013-01-15", "2013-03-15"),
}


def _log(t0: float, text: str) -> None:
    print(f"[{time.monotonic() - t0:6.0f}s] {text}", flush=True)


def measure(ctx: dict, workdir: Path, timeout_s: float = 1800) -> dict:
    """Run ``bench.flights.child`` on ``ctx``; poll the process tree's RSS (sum) every 0.1 s."""
    from bench.measure import _kill, _reap_leftovers, _tree

    ctx_path = workdir / f"{ctx['variant']}.ctx.json"
    ctx_path.write_text(json.dumps(ctx))
    loads = [os.getloadavg()[0]]
    t0 = time.monotonic()
    with open(workdir / f"{ctx['variant']}.log", "w") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "bench.flights.child", str(ctx_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        proc, seen, peak, last = psutil.Process(child.pid), {}, 0, t0
        while child.poll() is None:
            total = 0
            for p in _tree(proc):
                try:
                    total += p.memory_info().rss
                    seen.setdefault(p.pid, p)
                except psutil.Error:
                    pass
            peak = max(peak, total)
            if time.monotonic() - last > 5:
                loads.append(os.getloadavg()[0])
                last = time.monotonic()
            if time.monotonic() - t0 > timeout_s:
                _kill(proc, seen)
                break
            time.sleep(0.1)
        child.wait()
    _reap_leftovers(seen)
    result = json.loads(Path(ctx["result"]).read_text()) if Path(ctx["result"]).exists() else {"ok": False}
    result.update(
        process_s=time.monotonic() - t0,
        peak_tree_bytes=max(peak, result.get("vmhwm_self", 0)),
        load_avg=sum(loads) / len(loads),
    )
    return result


def compare(reference: pd.DataFrame, other: pd.DataFrame, features) -> dict:
    keys = ["flight_id", "as_of"]
    a = reference.sort_values(keys).reset_index(drop=True)
    b = other.sort_values(keys).reset_index(drop=True)
    if len(a) != len(b) or not (a[keys].astype(str).values == b[keys].astype(str).values).all():
        return {"same_rows": False}
    worst, nulls, exact = 0.0, 0, True
    for c in features:
        x, y = a[c].to_numpy(float), b[c].to_numpy(float)
        nulls += int((np.isnan(x) != np.isnan(y)).sum())
        both = ~np.isnan(x) & ~np.isnan(y)
        if both.any():
            worst = max(worst, float(np.abs(x[both] - y[both]).max()))
        exact &= bool(np.array_equal(x, y, equal_nan=True))
    return {"same_rows": True, "max_abs_diff": worst, "null_mismatches": nulls, "bit_identical": exact}


def publish_training_sets(cfg, model, kernel: pd.DataFrame, days) -> float:
    """Each day's slice of the one join published through ``build_training_set`` (validation, lineage)."""
    import jobs.training.training_set as ts

    by_day = {d: f.drop(columns="label_ds") for d, f in kernel.groupby("label_ds")}
    real = ts.join_features
    t0 = time.monotonic()
    try:
        for d in days:
            ts.join_features = lambda *a, _d=d, **k: iter([by_day[_d]])
            ts.build_training_set(cfg, model, d, allow_unvalidated=True)
    finally:
        ts.join_features = real
    return time.monotonic() - t0


def check_days(cfg, model, days) -> dict:
    """The one join's partitions vs the real per-day join (``build_training_set`` on a scratch lake copy
    would re-publish; here: ``join_features`` of that day's labels with the training set's arguments)."""
    from jobs.engines.join import join_features
    from jobs.training.labels import labels_table
    from jobs.training.training_set import horizon_end_ds, training_set_table

    lake, out = cfg.lake(), {}
    for d in days:
        labels = labels_table(lake, model)
        through = labels.manifest(d).producer.get("inputs_through") or horizon_end_ds(model, d)
        modes = {fs.name: fs.training_mode for fs in model.feature_sets}
        per_day = pd.concat(list(join_features(cfg, model, labels.files(d), modes=modes, events_through=through)))
        published = training_set_table(lake, model).read(d)
        out[d] = compare(per_day, published, model.feature_names)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.flights", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="January-March only")
    p.add_argument("--out", default="bench/results/flights")
    p.add_argument("--only", default=",".join(VARIANTS), help="build variants (local is required)")
    args = p.parse_args(argv)
    from jobs.config import Config
    from jobs.ingest.landing import land
    from jobs.training.labels import build_labels, cutoffs_in, labels_table

    out = Path(args.out + ("_quick" if args.quick else "")).resolve()
    (out / "runs").mkdir(parents=True, exist_ok=True)
    cfg = Config(lake_root=str(out / "lake"))
    model = cfg.repo().model(MODEL)
    t0 = time.monotonic()
    report: dict = {"cores": os.cpu_count(), "load_start": os.getloadavg()[0], "quick": args.quick}

    t = time.monotonic()
    for source in model.sources:
        span = QUICK["land"] if args.quick else source.span
        if args.quick and source.name == "flight_schedule":
            span = ("2012-12-25", span[1])
        table = cfg.lake().table(source.table)
        if table.last_ds() != span[1] or table.first_ds() != span[0]:
            land(cfg, source.name, *span)
    report["land_s"] = time.monotonic() - t
    _log(t0, f"landed ({report['land_s']:.0f}s)")

    t = time.monotonic()
    labels = labels_table(cfg.lake(), model)
    days = cutoffs_in(model, *(QUICK["labels"] if args.quick else ("2013-01-01", LAST_LABEL_DAY)))
    todo = [d for d in days if not labels.exists(d)]
    if todo:
        build_labels(cfg, MODEL, todo, allow_unvalidated=True)
    report["labels_s"] = time.monotonic() - t
    queries = pd.concat([labels.read(d).assign(label_ds=d) for d in days], ignore_index=True)
    qpath = out / "runs" / "queries.parquet"
    queries.to_parquet(qpath, index=False)
    report.update(label_days=len(days), queries=len(queries), positive_rate=float(queries["label"].mean()))
    _log(t0, f"labels: {len(days)} days, {len(queries):,} rows ({report['labels_s']:.0f}s)")

    builds, frames = {}, {}
    for v in args.only.split(","):
        ctx = {
            "variant": v,
            "lake": cfg.lake_root,
            "queries": str(qpath),
            "out": str(out / "runs" / f"{v}.parquet"),
            "result": str(out / "runs" / f"{v}.result.json"),
        }
        builds[v] = measure(ctx, out / "runs")
        if builds[v].get("ok"):
            frames[v] = pd.read_parquet(ctx["out"])
            if v != "local" and "local" in frames:
                builds[v]["vs_kernel"] = compare(frames["local"], frames[v], model.feature_names)
        _log(
            t0,
            f"build {v}: {json.dumps({k: builds[v].get(k) for k in ('ok', 'setup_s', 'wall_s', 'peak_tree_bytes', 'vs_kernel', 'error')})}",
        )
    report["builds"] = builds

    from jobs.training.spec import TrainSpec
    from jobs.training.trainer import train_model
    from jobs.training.training_set import training_set_table

    tst = training_set_table(cfg.lake(), model)
    todo = [d for d in days if not tst.exists(d)]
    report["publish_s"] = publish_training_sets(cfg, model, frames["local"], todo) if todo else 0.0
    report["one_join_vs_per_day"] = check_days(cfg, model, QUICK["check"] if args.quick else CHECK_DAYS)
    _log(t0, f"training sets published ({report['publish_s']:.0f}s); check {report['one_join_vs_per_day']}")

    rng = QUICK["ranges"] if args.quick else (model.ranges.train, model.ranges.valid, ("2013-11-01", days[-1]))
    spec = TrainSpec(train=rng[0], valid=rng[1], holdback=rng[2], model_name=MODEL)
    t = time.monotonic()
    outcome = train_model(cfg, spec, baseline=True)
    report["train_s"] = time.monotonic() - t
    metrics = {k: float(v) for k, v in outcome.candidate.metrics.items()}
    report["candidate_metrics"] = metrics
    _log(t0, f"trained ({report['train_s']:.0f}s): { {k: round(v, 4) for k, v in metrics.items() if 'auc' in k} }")

    from sklearn.metrics import roc_auc_score

    from bench.flights.peers import historical_rate, schedule_columns, schedule_lgbm

    sched = schedule_columns(cfg, "2012-12-25", cfg.lake().table("raw_events/flight_schedule").last_ds())
    part = {
        r: tst.read(*rng[i]).merge(sched, on="flight_id", how="left", validate="many_to_one")
        for i, r in enumerate(("train", "valid", "holdback"))
    }
    hold = part["holdback"]
    rate, levels = historical_rate(part["train"], hold)
    lgbm, iters = schedule_lgbm(part["train"], part["valid"], hold)
    report["peers"] = {
        "holdback_rows": len(hold),
        "model_holdback_auc": metrics.get("holdback_auc"),
        "baseline_holdback_auc": metrics.get("baseline_holdback_auc"),
        "historical_rate_auc": float(roc_auc_score(hold["label"], rate)),
        "historical_rate_levels": levels,
        "schedule_lgbm_auc": float(roc_auc_score(hold["label"], lgbm)),
        "schedule_lgbm_rounds": int(iters),
    }
    report["total_s"] = time.monotonic() - t0
    report["load_end"] = os.getloadavg()[0]
    (out / "flights.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "flights.md").write_text(render(report))
    print(render(report))
    return 0


def render(r: dict) -> str:
    p = r["peers"]
    lines = [f"holdback: {p['holdback_rows']:,} flights", "", "| scorer | holdback AUC |", "|---|---:|"]
    lines += [f"| dep_delay_15 (LightGBM, 3 feature sets) | {p['model_holdback_auc']:.4f} |"]
    if p.get("baseline_holdback_auc") is not None:
        lines += [f"| dask-ml linear baseline (same features) | {p['baseline_holdback_auc']:.4f} |"]
    lines += [
        f"| historical rate, carrier x origin x sched_hour | {p['historical_rate_auc']:.4f} |",
        f"| LightGBM, schedule columns only | {p['schedule_lgbm_auc']:.4f} |",
        "",
        f"build of {r['queries']:,} label rows x 3 sets, one join ({r['cores']} cores):",
        "",
        "| engine | ok | setup s | build s | peak RSS MiB | vs kernel | build / kernel | load |",
        "|---|---|---:|---:|---:|---|---:|---:|",
    ]
    k = r["builds"].get("local", {}).get("wall_s")
    for v, b in r["builds"].items():
        vs = b.get("vs_kernel")
        vs_text = (
            "reference"
            if v == "local"
            else (
                "-"
                if not vs
                else (
                    "bit-identical"
                    if vs.get("bit_identical")
                    else f"max abs diff {vs.get('max_abs_diff', float('nan')):.2e}, {vs.get('null_mismatches')} null mismatches"
                )
            )
        )
        ratio = f"{b['wall_s'] / k:.2f}" if b.get("ok") and k else "-"
        lines.append(
            f"| {v} | {b.get('ok')} | {b.get('setup_s', 0):.1f} | {b.get('wall_s', float('nan')):.1f} | "
            f"{b.get('peak_tree_bytes', 0) / 2**20:.0f} | {vs_text} | {ratio} | {b.get('load_avg', 0):.2f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
