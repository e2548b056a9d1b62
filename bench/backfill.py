"""``python -m bench.backfill``: a range backfill of daily snapshots (and of training sets), one engine pass
vs one build per day.

    python -m bench.backfill --events 1M --entities 20k --days 10 --history 20 --engines dask,spark
    python -m bench.backfill --events 20M --entities 100k --days 90 --single-sample 5   # extrapolated singles
    python -m bench.backfill --what training --days 10 --engines local,dask             # training sets only

Generates ``--history + --days`` days of synthetic CDNOW-shaped events (``jobs.ingest.cdnow_synthetic``,
late arrivals and duplicates included) into a lake under ``<out>/data/``, then per engine, each phase in
its own child process (its own Dask LocalCluster / Spark session, started before the clock):

* ``single``: ``build_snapshot`` for each of the last ``--days`` days (or for ``--single-sample`` days
  spread evenly over them: the total is then EXTRAPOLATED as mean x days, and says so);
* ``range``: ``build_snapshot_range`` over the same days.

With ``--what training`` (or ``snapshots,training``) the same for the training sets of
``repurchase_90d`` with a ``--horizon``-day label (default 7, so the generated history suffices) at ``--days``
daily cut-offs ending ``--horizon`` days before the last generated day (labels built once, outside the
clock): ``build_training_set`` per cut-off vs one ``build_training_set_range``.

Both publish ungated (``validate=False``: the gate costs the same per day either way, and
the DAG validates a single-day build in its own task). Checks that every day built both ways has the
same rows, content fingerprint and inputs fingerprint, and prints a table (also ``<out>/backfill.md``, the rows in ``<out>/backfill.json``).
Peak RSS is the driver process's (``ru_maxrss``), not the Dask workers' or the Spark JVM's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

from bench.data import parse_size

# allow_unvalidated=True: this bench's lake is landed or generated and never validated (validation is
# not what it measures, and would dominate the time); the outputs are marked as built from unvalidated input.

FS = "customer_activity_v1"
MODEL = "repurchase_90d"
START = "2024-01-01"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.backfill", description=__doc__.split("\n\n")[0])
    p.add_argument("--events", default="1M", help="events over the whole history (default 1M)")
    p.add_argument("--entities", default="100k", help="distinct entities (default 100k)")
    p.add_argument("--days", type=int, default=10, help="days to backfill (default 10)")
    p.add_argument("--history", type=int, default=20, help="event days before the backfilled range (default 20)")
    p.add_argument("--engines", default="dask,spark", help="comma separated: local, dask, spark")
    p.add_argument("--single-sample", type=int, default=0, help="build only this many single days, extrapolate")
    p.add_argument("--buckets", type=int, default=16)
    p.add_argument("--out", default="bench/results/backfill")
    p.add_argument("--what", default="snapshots", help="comma separated: snapshots, training (default snapshots)")
    p.add_argument("--horizon", type=int, default=7, help="label horizon in days of the training sets (default 7)")
    p.add_argument("--phase", help=argparse.SUPPRESS)  # child mode: single | range | ts_single | ts_range
    p.add_argument("--engine", help=argparse.SUPPRESS)
    p.add_argument("--lake", help=argparse.SUPPRESS)
    p.add_argument("--only-days", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _days(args) -> list[str]:
    import datetime as dt

    from jobs.lake import day_range

    first = dt.date.fromisoformat(START) + dt.timedelta(days=args.history)
    return day_range(first.isoformat(), (first + dt.timedelta(days=args.days - 1)).isoformat())


def _cutoffs(args) -> list[str]:
    """The training cut-offs: ``--days`` days ending ``--horizon`` days before the last generated day."""
    import datetime as dt

    from jobs.lake import day_range

    last = dt.date.fromisoformat(START) + dt.timedelta(days=args.history + args.days - 1 - args.horizon)
    return day_range((last - dt.timedelta(days=args.days - 1)).isoformat(), last.isoformat())


def _model(args):
    """``repurchase_90d`` with a ``--horizon``-day label (same tables)."""
    import dataclasses

    from jobs.config import Config

    m = Config().repo().model(MODEL)
    return dataclasses.replace(m, label=dataclasses.replace(m.label, horizon_days=args.horizon))


def _labels(args, lake: str, cutoffs: list[str]) -> None:
    from jobs.config import Config
    from jobs.training.labels import build_labels, labels_table

    cfg = Config(lake_root=lake)
    model = _model(args)
    table = labels_table(cfg.lake(), model)
    if all(table.exists(c) and table.manifest(c).producer.get("horizon_days") == args.horizon for c in cutoffs):
        return
    t0 = time.perf_counter()
    build_labels(cfg, model, cutoffs)
    print(f"labels of {len(cutoffs)} cut-offs in {time.perf_counter() - t0:.0f}s", flush=True)


def _lake(args) -> str:
    from jobs.config import Config
    from jobs.ingest.cdnow_synthetic import generate_events

    events, entities = parse_size(args.events), parse_size(args.entities)
    root = os.path.abspath(f"{args.out}/data/e{events}_n{entities}_d{args.history + args.days}")
    meta = f"{root}/meta.json"
    want = {"events": events, "entities": entities, "days": args.history + args.days, "start": START}
    if os.path.exists(meta) and json.load(open(meta)) == want:
        return root
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    generate_events(Config(lake_root=root).lake(), entities=entities, events=events, days=want["days"], start=START)
    json.dump(want, open(meta, "w"))
    print(f"generated {events:,} events in {time.perf_counter() - t0:.0f}s -> {root}", flush=True)
    return root


def _child(args) -> None:
    """One phase on one engine; prints one JSON line."""
    from jobs.config import Config
    from jobs.snapshots import build_snapshot, build_snapshot_range
    from jobs.training.training_set import build_training_set, build_training_set_range

    cfg = Config(lake_root=args.lake, engine=args.engine, buckets=args.buckets, dask_workers=2)
    opts, closer = {}, None
    if args.engine == "dask":
        from distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
        opts["client"] = client = Client(cluster)
        closer = lambda: (client.close(), cluster.close())  # noqa: E731
    elif args.engine == "spark":
        from jobs.engines.spark_engine import get_spark

        opts["spark"] = get_spark("local[2]")
    days = args.only_days.split(",")
    t0 = time.perf_counter()
    if args.phase == "single":
        manifests = [build_snapshot(cfg, d, FS, allow_unvalidated=True, **opts) for d in days]
    elif args.phase == "range":
        manifests = build_snapshot_range(cfg, days[0], days[-1], FS, validate=False, allow_unvalidated=True, **opts)
    elif args.phase == "ts_single":
        model = _model(args)
        manifests = [build_training_set(cfg, model, d, validate=False, allow_unvalidated=True, **opts) for d in days]
    else:
        manifests = build_training_set_range(cfg, _model(args), days, validate=False, allow_unvalidated=True, **opts)
    seconds = time.perf_counter() - t0
    if closer:
        closer()
    out = {
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "days": {m.ds: [m.rows, m.content_fingerprint, m.inputs] for m in manifests},
    }
    print("RESULT " + json.dumps(out), flush=True)


def _run_child(args, lake: str, engine: str, phase: str, days: list[str]) -> dict:
    shutil.rmtree(f"{lake}/{'training_sets' if phase.startswith('ts_') else 'feature_snapshots'}", ignore_errors=True)
    cmd = [sys.executable, "-m", "bench.backfill", "--phase", phase, "--engine", engine, "--lake", lake]
    cmd += ["--only-days", ",".join(days), "--buckets", str(args.buckets), "--horizon", str(args.horizon)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{engine} {phase} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.phase:
        _child(args)
        return 0
    lake = _lake(args)
    rows = []
    for what in filter(None, args.what.split(",")):
        if what not in ("snapshots", "training"):
            raise SystemExit(f"--what: unknown {what!r}; expected snapshots or training")
        days = _days(args) if what == "snapshots" else _cutoffs(args)
        if what == "training":
            _labels(args, lake, days)
        if args.single_sample and args.single_sample < len(days):
            step = (len(days) - 1) / max(args.single_sample - 1, 1)
            sample = sorted({days[round(i * step)] for i in range(args.single_sample)})
        else:
            sample = days
        phases = ("single", "range") if what == "snapshots" else ("ts_single", "ts_range")
        for engine in filter(None, args.engines.split(",")):
            single = _run_child(args, lake, engine, phases[0], sample)
            ranged = _run_child(args, lake, engine, phases[1], days)
            same = all(ranged["days"][d] == single["days"][d] for d in sample)
            single_total = single["seconds"] / len(sample) * len(days)
            rows.append(
                {
                    "what": "daily snapshots" if what == "snapshots" else "training sets",
                    "engine": engine,
                    "single_s": single_total,
                    "extrapolated": len(sample) < len(days),
                    "range_s": ranged["seconds"],
                    "ratio": single_total / ranged["seconds"],
                    "identical": same,
                    "compared_days": len(sample),
                    "rss_single_mb": single["peak_rss_mb"],
                    "rss_range_mb": ranged["peak_rss_mb"],
                    "rows_last_day": ranged["days"][days[-1]][0],
                    "days": f"{days[0]}..{days[-1]}",
                    "load_1m": os.getloadavg()[0],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    load = os.getloadavg()
    head = (
        f"{parse_size(args.events):,} events, {parse_size(args.entities):,} entities, {args.history} history days + "
        f"{args.days} backfilled days, {args.buckets} buckets; training sets: {args.horizon}-day labels; "
        f"load average after the run {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} cores)\n\n"
    )
    table = (
        "| what | days | engine | one build per day | range pass | speed-up | identical (days compared) | "
        "driver peak RSS single / range | load after |\n"
    )
    table += "|---|---|---|---|---|---|---|---|---|\n"
    for r in rows:
        ext = " (extrapolated)" if r["extrapolated"] else ""
        table += (
            f"| {r['what']} | {r['days']} | {r['engine']} | {r['single_s']:.1f} s{ext} | {r['range_s']:.1f} s | "
            f"{r['ratio']:.1f}x | "
            f"{'yes' if r['identical'] else 'NO'} ({r['compared_days']}) | "
            f"{r['rss_single_mb']:.0f} / {r['rss_range_mb']:.0f} MB | {r['load_1m']:.1f} |\n"
        )
    print("\n" + head + table)
    os.makedirs(args.out, exist_ok=True)
    with open(f"{args.out}/backfill.md", "w") as f:
        f.write(head + table)
    with open(f"{args.out}/backfill.json", "w") as f:
        json.dump({"args": vars(args), "rows": rows}, f, indent=1)
    return 0 if all(r["identical"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
